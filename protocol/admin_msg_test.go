package protocol

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func adminTestKey(b byte) ClusterKey {
	var k ClusterKey
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func TestAdminCommandRoundTrip(t *testing.T) {
	k := adminTestKey(1)
	c := AdminCommand{At: time.Unix(1700000000, 123), Op: AdminOpHold, Target: "fwd-a", Actor: "admin@10.0.0.1",
		Args: []byte(`{"call":"00112233445566778899aabbccddeeff","media":"audio","hold":true}`)}
	c.Nonce[0], c.Nonce[15] = 7, 9
	b, err := MarshalAdminCommand(&c, k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalAdminCommand(b, k)
	if err != nil {
		t.Fatal(err)
	}
	if !got.At.Equal(c.At) || got.Nonce != c.Nonce || got.Op != c.Op || got.Target != c.Target || got.Actor != c.Actor || !bytes.Equal(got.Args, c.Args) {
		t.Fatalf("round trip: got %+v, want %+v", got, c)
	}
	if _, err := UnmarshalAdminCommand(b, adminTestKey(2)); !errors.Is(err, ErrAdminMsg) || !errors.Is(err, ErrAdminAuth) {
		t.Fatalf("another key: %v, want ErrAdminMsg", err)
	}
	for i := range b {
		bad := append([]byte(nil), b...)
		bad[i] ^= 0x10
		if _, err := UnmarshalAdminCommand(bad, k); err == nil {
			t.Fatalf("byte %d altered: accepted", i)
		}
	}
	// A reply is not a command, even under the right key.
	r, err := MarshalAdminReply(&AdminReply{At: c.At, Nonce: c.Nonce, Status: 200, Body: []byte("{}")}, k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UnmarshalAdminCommand(r, k); err == nil {
		t.Fatal("a reply taken for a command")
	}
	rr, err := UnmarshalAdminReply(r, k)
	if err != nil || rr.Status != 200 || rr.Nonce != c.Nonce || string(rr.Body) != "{}" {
		t.Fatalf("reply round trip: %+v %v", rr, err)
	}
}

func TestAdminCommandRefusesBadFields(t *testing.T) {
	k := adminTestKey(1)
	for _, c := range []AdminCommand{
		{Op: 0, Target: "a"},
		{Op: adminOpLast + 1, Target: "a"},
		{Op: AdminOpCalls, Target: ""},
		{Op: AdminOpCalls, Target: "has space"},
		{Op: AdminOpCalls, Target: "a", Args: make([]byte, MaxAdminArgs+1)},
	} {
		if _, err := MarshalAdminCommand(&c, k); !errors.Is(err, ErrAdminMsg) {
			t.Errorf("%+v: %v, want ErrAdminMsg", c.Op, err)
		}
	}
}

func TestAdminReplayGuard(t *testing.T) {
	now := time.Unix(1700000000, 0)
	g := NewAdminReplayGuard(3)
	c := AdminCommand{At: now, Op: AdminOpCalls, Target: "a"}
	if err := g.Take(&c, now); err != nil {
		t.Fatal(err)
	}
	if err := g.Take(&c, now.Add(time.Second)); !errors.Is(err, ErrAdminReplayed) || !errors.Is(err, ErrAdminMsg) {
		t.Fatalf("replay: %v, want ErrAdminReplayed", err)
	}
	old := AdminCommand{At: now.Add(-AdminFreshness - time.Millisecond)}
	old.Nonce[0] = 1
	if err := g.Take(&old, now); !errors.Is(err, ErrAdminStale) {
		t.Fatalf("stale command: %v, want ErrAdminStale", err)
	}
	future := AdminCommand{At: now.Add(AdminFreshness + time.Millisecond)}
	future.Nonce[0] = 2
	if err := g.Take(&future, now); err == nil {
		t.Fatal("command from the future taken")
	}
	for i := byte(3); i < 5; i++ {
		n := AdminCommand{At: now}
		n.Nonce[0] = i
		if err := g.Take(&n, now); err != nil {
			t.Fatal(err)
		}
	}
	full := AdminCommand{At: now}
	full.Nonce[0] = 9
	if err := g.Take(&full, now); !errors.Is(err, ErrAdminTooMany) {
		t.Fatalf("beyond the guard's bound: %v, want ErrAdminTooMany", err)
	}
	// Once the window has passed, old nonces are forgotten and room made;
	// the replay of the first command is refused as stale.
	later := now.Add(AdminFreshness + 2*time.Second)
	full.At = later
	if err := g.Take(&full, later); err != nil {
		t.Fatal(err)
	}
	if err := g.Take(&c, later); err == nil {
		t.Fatal("old command replayed after the window")
	}
}

func FuzzAdminCommand(f *testing.F) {
	k := adminTestKey(1)
	c := AdminCommand{At: time.Unix(1700000000, 0), Op: AdminOpCapture, Target: "fwd-a", Actor: "ops",
		Args: []byte(`{"call":"00112233445566778899aabbccddeeff","seconds":5}`)}
	b, _ := MarshalAdminCommand(&c, k)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := UnmarshalAdminCommand(b, k)
		if err != nil {
			return
		}
		again, err := MarshalAdminCommand(&c, k)
		if err != nil {
			t.Fatalf("decoded command does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoded differently")
		}
	})
}

func FuzzAdminReply(f *testing.F) {
	k := adminTestKey(1)
	b, _ := MarshalAdminReply(&AdminReply{At: time.Unix(1700000000, 0), Status: 200, Body: []byte(`{"forwarder":"a"}`)}, k)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := UnmarshalAdminReply(b, k)
		if err != nil {
			return
		}
		again, err := MarshalAdminReply(&r, k)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoded differently: %v", err)
		}
	})
}
