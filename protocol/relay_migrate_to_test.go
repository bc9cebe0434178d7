package protocol

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// migrateBody joins the fixed words, the echo, the address and the MAC.
func migrateBody(fixed []byte, echo byte, addr []byte, mac byte) []byte {
	b := append([]byte(nil), fixed...)
	b = append(b, bytes.Repeat([]byte{echo}, MigrateEchoLen)...)
	b = append(b, addr...)
	return append(b, bytes.Repeat([]byte{mac}, MigrateMACLen)...)
}

func echoOf(v byte) (out [MigrateEchoLen]byte) {
	copy(out[:], bytes.Repeat([]byte{v}, MigrateEchoLen))
	return out
}

func macOf(v byte) (out [MigrateMACLen]byte) {
	copy(out[:], bytes.Repeat([]byte{v}, MigrateMACLen))
	return out
}

func TestMigrateTo(t *testing.T) {
	v4 := []byte{0x01, 0x00, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88} // family IPv4, port 3478, 5000 ms
	relayRunBodyTests(t, func() RelayMessage { return new(MigrateTo) },
		[]relayBodyCase{
			{
				name: "ipv4",
				msg: &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.10:3478"), Deadline: 5 * time.Second,
					Echo: echoOf(0xee), MAC: macOf(0xaa)},
				data: migrateBody(v4, 0xee, []byte{0xc0, 0x00, 0x02, 0x0a}, 0xaa),
			},
			{
				name: "ipv6",
				msg: &MigrateTo{Addr: netip.MustParseAddrPort("[2001:db8::1]:443"), Deadline: 250 * time.Millisecond,
					Echo: echoOf(1), MAC: macOf(2)},
				data: migrateBody([]byte{
					0x02, 0x00, 0x01, 0xbb, // family IPv6, port 443
					0x00, 0x00, 0x00, 0xfa, // deadline 250 ms
				}, 1, []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 2),
			},
			{
				name: "tcp",
				msg: &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.10:3478"), Transport: TransportTCP,
					Deadline: 5 * time.Second, Echo: echoOf(0xee), MAC: macOf(0xaa)},
				data: migrateBody([]byte{0x01, 0x01, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88}, // IPv4, TCP, port 3478, 5000 ms
					0xee, []byte{0xc0, 0x00, 0x02, 0x0a}, 0xaa),
			},
			{
				name: "tls ipv6",
				msg: &MigrateTo{Addr: netip.MustParseAddrPort("[2001:db8::1]:443"), Transport: TransportTLS,
					Echo: echoOf(1), MAC: macOf(2)},
				data: migrateBody([]byte{0x02, 0x02, 0x01, 0xbb, 0, 0, 0, 0}, // IPv6, TLS, port 443, no deadline
					1, []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 2),
			},
			{
				name: "ipv4-mapped ipv6 stays ipv6, no deadline",
				msg:  &MigrateTo{Addr: netip.MustParseAddrPort("[::ffff:10.0.0.1]:9")},
				data: migrateBody([]byte{0x02, 0x00, 0x00, 0x09, 0, 0, 0, 0}, 0,
					[]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0x0a, 0x00, 0x00, 0x01}, 0),
			},
		},
		[]relayBadBody{
			{"empty", nil, ErrRelayAppTruncated},
			{"no address", v4, ErrRelayAppTruncated},
			// The unauthenticated body of earlier versions: 12 bytes.
			{"no echo, no mac", append(append([]byte(nil), v4...), 0xc0, 0x00, 0x02, 0x0a), ErrRelayAppTruncated},
			{"mac cut", migrateBody(v4, 0, []byte{0xc0, 0, 2, 0x0a}, 0)[:39], ErrRelayAppTruncated},
			{
				"ipv6 cut",
				migrateBody([]byte{0x02, 0x00, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88}, 0, make([]byte, 12), 0),
				ErrRelayAppTruncated,
			},
			{"ipv4 with an ipv6 address", migrateBody(v4, 0, make([]byte, 16), 0), ErrRelayAppOversized},
			{
				"family 3",
				migrateBody([]byte{0x03, 0x00, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88}, 0, []byte{0xc0, 0, 2, 0x0a}, 0),
				ErrRelayAppInvalid,
			},
			{
				"port 0",
				migrateBody([]byte{0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x13, 0x88}, 0, []byte{0xc0, 0, 2, 0x0a}, 0),
				ErrRelayAppInvalid,
			},
			{"unspecified address", migrateBody(v4, 0, []byte{0, 0, 0, 0}, 0), ErrRelayAppInvalid},
			{
				"transport 3",
				migrateBody([]byte{0x01, 0x03, 0x0d, 0x96, 0x00, 0x00, 0x13, 0x88}, 0, []byte{0xc0, 0, 2, 0x0a}, 0),
				ErrRelayAppInvalid,
			},
			{
				"transport 255",
				migrateBody([]byte{0x02, 0xff, 0x01, 0xbb, 0, 0, 0, 0}, 0, []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 0),
				ErrRelayAppInvalid,
			},
		},
		[]relayBadMsg{
			{"zero value", &MigrateTo{}},
			{"port 0", &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.1:0")}},
			{"zone", &MigrateTo{Addr: netip.MustParseAddrPort("[fe80::1%eth0]:3478")}},
			{"unspecified", &MigrateTo{Addr: netip.MustParseAddrPort("[::]:3478")}},
			{"negative deadline", &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.1:1"), Deadline: -time.Millisecond}},
			{"deadline too long", &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.1:1"), Deadline: 50 * 24 * time.Hour}},
			{"transport 3", &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.1:1"), Transport: 3}},
		},
	)
}

// TestMigrateToMAC: a signed MigrateTo verifies with its key only, and any
// change to any byte (the address, the deadline, the echo, the header, the
// MAC) makes it fail.
func TestMigrateToMAC(t *testing.T) {
	key := IntegrityKey(bytes.Repeat([]byte{7}, 108))
	for _, addr := range []string{"192.0.2.10:3478", "[2001:db8::1]:443"} {
		m := &MigrateTo{Addr: netip.MustParseAddrPort(addr), Deadline: 5 * time.Second, Echo: echoOf(9)}
		pkt, err := SignMigrateTo(0, m, key)
		if err != nil {
			t.Fatal(err)
		}
		if m.MAC == ([16]byte{}) || !bytes.Equal(pkt[len(pkt)-16:], m.MAC[:]) {
			t.Fatalf("%s: MAC not set: %x", addr, pkt)
		}
		if !VerifyMigrateTo(pkt, key) {
			t.Fatalf("%s: own signature does not verify", addr)
		}
		if VerifyMigrateTo(pkt, IntegrityKey(bytes.Repeat([]byte{8}, 108))) {
			t.Fatalf("%s: verifies under another key", addr)
		}
		for i := range pkt {
			bad := append([]byte(nil), pkt...)
			bad[i] ^= 0x01
			if VerifyMigrateTo(bad, key) {
				t.Fatalf("%s: byte %d flipped still verifies", addr, i)
			}
		}
		if VerifyMigrateTo(pkt[:len(pkt)-4], key) || VerifyMigrateTo(pkt[:20], key) || VerifyMigrateTo(nil, key) {
			t.Fatalf("%s: a cut packet verifies", addr)
		}
		got, _, err := ParseRelayApp(pkt)
		if err != nil || *got.(*MigrateTo) != *m {
			t.Fatalf("%s: decoded %#v (%v), want %#v", addr, got, err, m)
		}
	}
}

// readmeExample returns README.md's example NAME as bytes: hex bytes
// separated by single spaces, then, after two spaces or more, a comment.
func readmeExample(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(b), "```hex example:"+name+"\n")
	if !ok {
		t.Fatalf("README.md has no %s example", name)
	}
	block, _, _ = strings.Cut(block, "```")
	var out []byte
	for _, line := range strings.Split(block, "\n") {
		data, _, _ := strings.Cut(line, "  ")
		if data == "" {
			continue
		}
		h, err := hex.DecodeString(strings.ReplaceAll(data, " ", ""))
		if err != nil {
			t.Fatalf("%s: line %q: %v", name, line, err)
		}
		out = append(out, h...)
	}
	return out
}

// TestMigrateToSpecExample checks README.md 5.7's example byte for byte:
// its fields, signed with the integrity key of section 2's example token,
// give the packet printed there, which parses back to those fields.
func TestMigrateToSpecExample(t *testing.T) {
	want := readmeExample(t, "migrate-to")
	key := IntegrityKey(readmeExample(t, "token"))
	if !bytes.Equal(key, readmeExample(t, "integrity-key")) {
		t.Fatalf("K of the example token is %x", key)
	}
	m := &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.10:3478"), Deadline: 5 * time.Second}
	copy(m.Echo[:], "crly\x00\x00\x00\x00\x00\x00\x00\x02") // the join of 3.1 that was admitted
	got, err := SignMigrateTo(0, m, key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("README example\n%x\nbut the code makes\n%x", want, got)
	}
	if !VerifyMigrateTo(want, key) {
		t.Fatal("the README example does not verify")
	}

	// The same move naming a TLS listener: the transport byte is covered.
	tls := &MigrateTo{Addr: netip.MustParseAddrPort("192.0.2.10:443"), Transport: TransportTLS, Deadline: 5 * time.Second, Echo: m.Echo}
	got, err = SignMigrateTo(0, tls, key)
	if err != nil {
		t.Fatal(err)
	}
	if want := readmeExample(t, "migrate-to-tls"); !bytes.Equal(got, want) {
		t.Fatalf("README TLS example\n%x\nbut the code makes\n%x", want, got)
	}
	got[13] = byte(TransportTCP) // the transport byte: a TCP move under the TLS one's MAC
	if VerifyMigrateTo(got, key) {
		t.Fatal("a changed transport still verifies")
	}
}

// fuzzMigrateKey is the key FuzzMigrateToVerify verifies with.
var fuzzMigrateKey = IntegrityKey(bytes.Repeat([]byte{0x5a}, 108))

func migrateVerifySeeds(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, addr := range []string{"192.0.2.10:3478", "[2001:db8::1]:443"} {
		m := &MigrateTo{Addr: netip.MustParseAddrPort(addr), Deadline: time.Second, Echo: echoOf(3)}
		pkt, err := SignMigrateTo(0, m, fuzzMigrateKey)
		if err != nil {
			t.Fatal(err)
		}
		name := "ipv4"
		if m.Addr.Addr().Is6() {
			name = "ipv6"
		}
		out[name+"-signed"] = pkt
		bad := append([]byte(nil), pkt...)
		bad[len(bad)-1] ^= 1
		out[name+"-mac-flipped"] = bad
		out[name+"-cut"] = pkt[:len(pkt)-4]
		m.Transport = TransportTCP // a stream listener: TCP for the IPv4 one, TLS for the IPv6 one
		if m.Addr.Addr().Is6() {
			m.Transport = TransportTLS
		}
		if pkt, err = SignMigrateTo(0, m, fuzzMigrateKey); err != nil {
			t.Fatal(err)
		}
		out[name+"-"+m.Transport.String()+"-signed"] = pkt
	}
	return out
}

// FuzzMigrateToVerify: VerifyMigrateTo never panics, and whatever it
// accepts decodes to a MigrateTo that signs back to exactly those bytes
// (so nothing outside the fields and the MAC can ride along).
func FuzzMigrateToVerify(f *testing.F) {
	for _, b := range migrateVerifySeeds(&testing.T{}) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !VerifyMigrateTo(b, fuzzMigrateKey) {
			return
		}
		m, ssrc, err := ParseRelayApp(b)
		if err != nil {
			return // a forged MAC over garbage is 2^-128; still nothing to act on
		}
		mt, ok := m.(*MigrateTo)
		if !ok {
			t.Fatalf("verified a %T", m)
		}
		again, err := SignMigrateTo(ssrc, mt, fuzzMigrateKey)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("verified %x, but its fields sign to %x (%v)", b, again, err)
		}
	})
}
