package statestore

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/protocol"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	var digits strings.Builder
	for line := range strings.Lines(s) {
		line, _, _ = strings.Cut(line, "//")
		digits.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(digits.String())
	require.NoError(t, err)
	return b
}

func TestEncodeCallLayout(t *testing.T) {
	call := protocol.ID{0xca, 0x11}
	p := protocol.ID{0x01}
	c := Call{ID: call, Class: protocol.ClassOneToOne, MaxSize: 2, Version: 7,
		Members: map[protocol.ID]Member{p: {
			Forwarder:     "f1",
			Trunk:         netip.MustParseAddrPort("198.51.100.7:7000"),
			Addr:          netip.MustParseAddrPort("192.0.2.1:5004"),
			SSRCs:         []uint32{0xdeadbeef},
			JoinedAt:      time.Unix(0, 0x0102030405060708).UTC(),
			Subscriptions: []protocol.ID{{0x02}},
		}}}
	want := mustHex(t, `
		02                                    // format 2
		0000000000000007                      // version 7
		ca110000000000000000000000000000      // call id
		01                                    // class one-to-one
		0002                                  // max size 2
		0001                                  // 1 member
		01000000000000000000000000000000      // participant id
		02 6631                               // forwarder "f1"
		04 c6336407 1b58                      // trunk 198.51.100.7:7000
		04 c0000201 138c                      // 192.0.2.1:5004
		0102030405060708                      // joined at
		01 deadbeef                           // 1 SSRC
		01 02000000000000000000000000000000   // 1 subscription
	`)
	got, err := encodeCall(nil, c)
	require.NoError(t, err)
	require.Equal(t, want, got)
	back, err := decodeCall(got)
	require.NoError(t, err)
	require.Equal(t, c, back)
}

// TestDecodeCallFormat1 reads a record written before trunk addresses: the
// member's Trunk is zero. Format 1 is never written, but re-encoding in it
// gives back the same bytes.
func TestDecodeCallFormat1(t *testing.T) {
	rec := mustHex(t, `
		01                                    // format 1
		0000000000000007                      // version 7
		ca110000000000000000000000000000      // call id
		01                                    // class one-to-one
		0002                                  // max size 2
		0001                                  // 1 member
		01000000000000000000000000000000      // participant id
		02 6631                               // forwarder "f1"
		04 c0000201 138c                      // 192.0.2.1:5004
		0102030405060708                      // joined at
		01 deadbeef                           // 1 SSRC
		01 02000000000000000000000000000000   // 1 subscription
	`)
	want := Call{ID: protocol.ID{0xca, 0x11}, Class: protocol.ClassOneToOne, MaxSize: 2, Version: 7,
		Members: map[protocol.ID]Member{{0x01}: {
			Forwarder:     "f1",
			Addr:          netip.MustParseAddrPort("192.0.2.1:5004"),
			SSRCs:         []uint32{0xdeadbeef},
			JoinedAt:      time.Unix(0, 0x0102030405060708).UTC(),
			Subscriptions: []protocol.ID{{0x02}},
		}}}
	got, err := decodeCall(rec)
	require.NoError(t, err)
	require.Equal(t, want, got)
	again, err := appendRecord(nil, got, recordFormatV1)
	require.NoError(t, err)
	require.Equal(t, rec, again)

	// A changed record is written in the current format.
	cur, err := encodeCall(nil, got)
	require.NoError(t, err)
	require.Equal(t, byte(recordFormat), cur[0])
	back, err := decodeCall(cur)
	require.NoError(t, err)
	require.Equal(t, want, back)

	// Format 1 cannot carry a trunk address.
	got.Members[protocol.ID{0x01}] = testMember(1)
	_, err = appendRecord(nil, got, recordFormatV1)
	require.ErrorIs(t, err, ErrInvalid)
}

func TestDecodeCallRoundTripsAddresses(t *testing.T) {
	for _, a := range []netip.AddrPort{
		{}, // unset
		netip.MustParseAddrPort("[2001:db8::1]:443"),
		netip.MustParseAddrPort("[::ffff:192.0.2.1]:80"), // IPv4-mapped stays IPv6
		netip.AddrPortFrom(netip.Addr{}, 9),
	} {
		c := Call{ID: protocol.ID{1}, Class: protocol.ClassGroup, MaxSize: 3, Version: 1,
			Members: map[protocol.ID]Member{{2}: {Addr: a}, {3}: {Trunk: a}}}
		rec, err := encodeCall(nil, c)
		require.NoError(t, err)
		back, err := decodeCall(rec)
		require.NoError(t, err)
		require.Equal(t, c, back, a.String())
	}
}

func TestDecodeCallRejects(t *testing.T) {
	good, err := encodeCall(nil, Call{ID: protocol.ID{1}, Class: protocol.ClassGroup, MaxSize: 2, Version: 1,
		Members: map[protocol.ID]Member{{2}: testMember(1), {3}: testMember(2)}})
	require.NoError(t, err)
	// Offsets into good: the first member starts after the header; its
	// forwarder is "fwd-1", its trunk and address IPv4.
	const (
		member1 = recordHeaderSize
		trunk1  = member1 + 16 + 1 + 5
		addr1   = trunk1 + 1 + 4 + 2
	)
	member2 := member1 + 16 + len(appendMember(nil, testMember(1), recordFormat))
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, rec := range map[string][]byte{
		"nil":            nil,
		"short header":   good[:29],
		"format 0":       edit(func(b []byte) []byte { b[0] = 0; return b }),
		"format 3":       edit(func(b []byte) []byte { b[0] = 3; return b }),
		"format 1 body":  edit(func(b []byte) []byte { b[0] = 1; return b }),
		"version 0":      edit(func(b []byte) []byte { copy(b[1:9], make([]byte, 8)); return b }),
		"class 3":        edit(func(b []byte) []byte { b[25] = 3; return b }),
		"max size 0":     edit(func(b []byte) []byte { b[26], b[27] = 0, 0; return b }),
		"no members":     edit(func(b []byte) []byte { b[28], b[29] = 0, 0; return b[:30] }),
		"over max size":  edit(func(b []byte) []byte { b[27] = 1; return b }),
		"truncated":      good[:len(good)-1],
		"trailing":       append(bytes.Clone(good), 0),
		"trunk family 5": edit(func(b []byte) []byte { b[trunk1] = 5; return b }),
		"addr family 5":  edit(func(b []byte) []byte { b[addr1] = 5; return b }),
		"repeated id":    edit(func(b []byte) []byte { b[member2] = 2; return b }),
		"count too high": edit(func(b []byte) []byte { b[29] = 3; b[27] = 3; return b }),
	} {
		_, err := decodeCall(rec)
		require.ErrorIs(t, err, ErrCorrupt, name)
	}
	require.Equal(t, byte(4), good[trunk1], "offsets")
	require.Equal(t, byte(4), good[addr1], "offsets")
	require.Equal(t, byte(3), good[member2], "offsets: the second member is {3}")
}

// FuzzDecodeCall checks that no input panics, every failure is ErrCorrupt,
// and a record that decodes encodes back to the same bytes (the format is
// canonical) and decodes again to the same call.
func FuzzDecodeCall(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed.rec)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCall(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		enc, err := appendRecord(nil, c, b[0])
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", c, err)
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("not canonical:\n in  %x\n out %x", b, enc)
		}
		again, err := decodeCall(enc)
		require.NoError(t, err)
		require.Equal(t, c, again)
		// Whatever was read is written back in the current format.
		cur, err := encodeCall(nil, c)
		require.NoError(t, err)
		again, err = decodeCall(cur)
		require.NoError(t, err)
		require.Equal(t, c, again)
	})
}

type fuzzSeed struct {
	name  string // its file in testdata/fuzz/FuzzDecodeCall
	rec   []byte
	valid bool
}

// fuzzSeeds are the records the fuzz corpus in testdata starts from, in both
// formats; TestFuzzCorpus keeps the files in line with them.
func fuzzSeeds(t testing.TB) []fuzzSeed {
	oneToOne := Call{ID: protocol.ID{0xca, 0x11}, Class: protocol.ClassOneToOne, MaxSize: 2, Version: 1,
		Members: map[protocol.ID]Member{{1}: testMember(1), {2}: testMember(2)}}
	group := Call{ID: protocol.ID{9}, Class: protocol.ClassGroup, MaxSize: 100, Version: 12345,
		Members: map[protocol.ID]Member{
			{2}: testMember(2),
			{3}: {},
			{4}: {Forwarder: "fwd-eu-1", Trunk: netip.MustParseAddrPort("[2001:db8::2]:7000"),
				Addr: netip.MustParseAddrPort("[2001:db8::1]:3478"), SSRCs: []uint32{1, 2, 3},
				Subscriptions: []protocol.ID{{5}, {6}}},
			{5}: {Addr: netip.MustParseAddrPort("[::ffff:10.1.2.3]:9")},
		}}
	v1 := func(c Call) Call {
		c.Members = maps.Clone(c.Members)
		for id, m := range c.Members {
			m.Trunk = netip.AddrPort{}
			c.Members[id] = m
		}
		return c
	}
	enc := func(c Call, format byte) []byte {
		rec, err := appendRecord(nil, c, format)
		require.NoError(t, err)
		return rec
	}
	header := enc(oneToOne, recordFormat)[:recordHeaderSize]
	future := enc(oneToOne, recordFormat)
	future[0] = recordFormat + 1
	return []fuzzSeed{
		{"v2-one-to-one", enc(oneToOne, recordFormat), true},
		{"v2-group", enc(group, recordFormat), true},
		{"v2-truncated", enc(oneToOne, recordFormat)[:len(enc(oneToOne, recordFormat))-3], false},
		{"v2-trailing-bytes", append(enc(group, recordFormat), 0), false},
		{"v1-one-to-one", enc(v1(oneToOne), recordFormatV1), true},
		{"v1-group", enc(v1(group), recordFormatV1), true},
		{"v1-truncated", enc(v1(oneToOne), recordFormatV1)[:len(enc(v1(oneToOne), recordFormatV1))-3], false},
		{"v1-trailing-bytes", append(enc(v1(group), recordFormatV1), 0), false},
		{"header-only", header, false},
		{"future-format", future, false},
		{"empty", []byte{}, false},
		{"json", []byte(`{"id":"ca11","members":{}}`), false},
	}
}

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/FuzzDecodeCall from fuzzSeeds")

// TestFuzzCorpus checks that testdata/fuzz/FuzzDecodeCall holds exactly the
// seeds of fuzzSeeds (go test ./statestore -run FuzzCorpus -args -update-corpus
// rewrites it),
// and that each decodes, or fails to, as its name says.
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeCall")
	seeds := fuzzSeeds(t)
	if *updateCorpus {
		require.NoError(t, os.RemoveAll(dir))
		require.NoError(t, os.MkdirAll(dir, 0o755))
		for _, s := range seeds {
			data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.rec)
			require.NoError(t, os.WriteFile(filepath.Join(dir, s.name), []byte(data), 0o644))
		}
	}
	files, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, f := range files {
		names = append(names, f.Name())
	}
	for _, s := range seeds {
		require.Contains(t, names, s.name, "run go test ./statestore -run FuzzCorpus -args -update-corpus")
		raw, err := os.ReadFile(filepath.Join(dir, s.name))
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.rec), string(raw), s.name)
		_, err = decodeCall(s.rec)
		if s.valid {
			require.NoError(t, err, s.name)
		} else {
			require.ErrorIs(t, err, ErrCorrupt, s.name)
		}
	}
	require.Len(t, names, len(seeds), "files in %s that fuzzSeeds lacks", dir)
}
