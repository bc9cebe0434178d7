package statestore

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
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
			Addr:          netip.MustParseAddrPort("192.0.2.1:5004"),
			SSRCs:         []uint32{0xdeadbeef},
			JoinedAt:      time.Unix(0, 0x0102030405060708).UTC(),
			Subscriptions: []protocol.ID{{0x02}},
		}}}
	want := mustHex(t, `
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
	got, err := encodeCall(nil, c)
	require.NoError(t, err)
	require.Equal(t, want, got)
	back, err := decodeCall(got)
	require.NoError(t, err)
	require.Equal(t, c, back)
}

func TestDecodeCallRoundTripsAddresses(t *testing.T) {
	for _, a := range []netip.AddrPort{
		{}, // unset
		netip.MustParseAddrPort("[2001:db8::1]:443"),
		netip.MustParseAddrPort("[::ffff:192.0.2.1]:80"), // IPv4-mapped stays IPv6
		netip.AddrPortFrom(netip.Addr{}, 9),
	} {
		c := Call{ID: protocol.ID{1}, Class: protocol.ClassGroup, MaxSize: 3, Version: 1,
			Members: map[protocol.ID]Member{{2}: {Addr: a}}}
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
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, rec := range map[string][]byte{
		"nil":            nil,
		"short header":   good[:29],
		"format 0":       edit(func(b []byte) []byte { b[0] = 0; return b }),
		"version 0":      edit(func(b []byte) []byte { copy(b[1:9], make([]byte, 8)); return b }),
		"class 3":        edit(func(b []byte) []byte { b[25] = 3; return b }),
		"max size 0":     edit(func(b []byte) []byte { b[26], b[27] = 0, 0; return b }),
		"no members":     edit(func(b []byte) []byte { b[28], b[29] = 0, 0; return b[:30] }),
		"over max size":  edit(func(b []byte) []byte { b[27] = 1; return b }),
		"truncated":      good[:len(good)-1],
		"trailing":       append(bytes.Clone(good), 0),
		"family 5":       edit(func(b []byte) []byte { b[30+16+1+5] = 5; return b }),
		"repeated id":    edit(func(b []byte) []byte { b[30+63] = 2; return b }), // second member's id
		"count too high": edit(func(b []byte) []byte { b[29] = 3; b[27] = 3; return b }),
	} {
		_, err := decodeCall(rec)
		require.ErrorIs(t, err, ErrCorrupt, name)
	}
}

// FuzzDecodeCall checks that no input panics, every failure is ErrCorrupt,
// and a record that decodes encodes back to the same bytes (the format is
// canonical) and decodes again to the same call.
func FuzzDecodeCall(f *testing.F) {
	for _, c := range []Call{
		{ID: protocol.ID{1}, Class: protocol.ClassOneToOne, MaxSize: 2, Version: 1,
			Members: map[protocol.ID]Member{{2}: testMember(1)}},
		{ID: protocol.ID{9}, Class: protocol.ClassGroup, MaxSize: 50, Version: 1 << 40,
			Members: map[protocol.ID]Member{{2}: testMember(2), {3}: {}, {4}: {Addr: netip.MustParseAddrPort("[2001:db8::1]:1")}}},
	} {
		rec, err := encodeCall(nil, c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(rec)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCall(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		enc, err := encodeCall(nil, c)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", c, err)
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("not canonical:\n in  %x\n out %x", b, enc)
		}
		again, err := decodeCall(enc)
		require.NoError(t, err)
		require.Equal(t, c, again)
	})
}
