package statestore

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/internal/embedredis"
	"github.com/callrelay/callrelay/internal/testkit/testenv"
)

const testLeaseName = "conductor/partition/17"

// leaseBackend is one store under the lease suite.
type leaseBackend struct {
	// open returns another client of the same store, as another process
	// would have.
	open func() Leases
	// short is a ttl that expire waits out.
	short time.Duration
	// expire returns once the lease name, last acquired or renewed with
	// ttl short, has expired.
	expire func(t *testing.T, name string)
	// requireFirst fails t unless epoch is what the store hands out first
	// for a name it has no counter for: its clock in Unix seconds plus one.
	requireFirst func(t *testing.T, epoch uint64)
}

// requireFirstEpochNow fails t unless epoch is a first epoch of a store on
// the wall clock of this machine: time.Now().Unix()+1, give or take 5 s.
func requireFirstEpochNow(t *testing.T, epoch uint64) {
	t.Helper()
	want := time.Now().Unix() + 1
	require.True(t, int64(epoch) >= want-5 && int64(epoch) <= want+5,
		"first epoch %d, want the store's clock in Unix seconds plus one, %d ± 5", epoch, want)
}

// TestLeaseConformance runs one lease suite against Memory (on a fake
// clock), Redis on a real redis-server, and Redis on the demo's in-process
// stand-in.
func TestLeaseConformance(t *testing.T) {
	backends := map[string]func(t *testing.T) leaseBackend{
		"memory": func(*testing.T) leaseBackend {
			clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
			s := NewMemory(Config{Now: clk.Now})
			return leaseBackend{
				open:   func() Leases { return s },
				short:  time.Second,
				expire: func(*testing.T, string) { clk.Advance(time.Second) },
				requireFirst: func(t *testing.T, epoch uint64) {
					t.Helper()
					require.Equal(t, uint64(clk.Now().Unix())+1, epoch,
						"first epoch: the fake clock's Unix seconds plus one")
				},
			}
		},
		"redis": func(t *testing.T) leaseBackend {
			return redisLeaseBackend(t, testenv.Redis(t).URL())
		},
		"embedredis": func(t *testing.T) leaseBackend {
			srv, err := embedredis.Start(nil)
			require.NoError(t, err)
			t.Cleanup(srv.Close)
			return redisLeaseBackend(t, srv.URL())
		},
	}
	tests := map[string]func(t *testing.T, b leaseBackend){
		"AcquireFree":            testLeaseAcquireFree,
		"ReacquireSameEpoch":     testLeaseReacquireSameEpoch,
		"HeldByAnother":          testLeaseHeldByAnother,
		"ExpiryAndTakeover":      testLeaseExpiryAndTakeover,
		"ReleaseThenAcquire":     testLeaseReleaseThenAcquire,
		"ReleaseByNonHolder":     testLeaseReleaseByNonHolder,
		"StaleEpochSameOwner":    testLeaseStaleEpochSameOwner,
		"EpochsNeverDecrease":    testLeaseEpochsNeverDecrease,
		"RaceOneHolderPerEpoch":  testLeaseRace,
		"InvalidArguments":       testLeaseInvalidArguments,
		"CanceledContext":        testLeaseCanceledContext,
		"NamesAreIndependent":    testLeaseNamesAreIndependent,
		"OwnersWithOddCharacter": testLeaseOddOwner,
	}
	for bname, newBackend := range backends {
		t.Run(bname, func(t *testing.T) {
			for name, test := range tests {
				t.Run(name, func(t *testing.T) { test(t, newBackend(t)) })
			}
		})
	}
}

// redisLeaseBackend opens Redis clients on url, each closed when t ends.
// Expiry runs on the server's clock, so the suite polls for it.
func redisLeaseBackend(t *testing.T, url string) leaseBackend {
	open := redisOpener(t, url)
	probe := open().(*Redis)
	return leaseBackend{
		open:  func() Leases { return open().(*Redis) },
		short: 50 * time.Millisecond,
		expire: func(t *testing.T, name string) {
			t.Helper()
			testenv.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				l, err := probe.LeaseHolder(testCtx(t), name)
				if !errors.Is(err, ErrNotFound) {
					return fmt.Errorf("lease %q not expired: holder %+v, %v", name, l, err)
				}
				return nil
			})
		},
		requireFirst: requireFirstEpochNow,
	}
}

func testLeaseAcquireFree(t *testing.T, b leaseBackend) {
	ctx, s := testCtx(t), b.open()
	_, err := s.LeaseHolder(ctx, testLeaseName)
	require.ErrorIs(t, err, ErrNotFound)

	l, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	b.requireFirst(t, l.Epoch) // a never-held lease starts at the store's clock + 1
	want := Lease{Name: testLeaseName, Owner: "conductor-a", Epoch: l.Epoch}
	require.Equal(t, want, l)
	got, err := s.LeaseHolder(ctx, testLeaseName)
	require.NoError(t, err)
	require.Equal(t, want, got)
	// Another client sees the same holder.
	got, err = b.open().LeaseHolder(ctx, testLeaseName)
	require.NoError(t, err)
	require.Equal(t, want, got)
}

func testLeaseReacquireSameEpoch(t *testing.T, b leaseBackend) {
	ctx, s := testCtx(t), b.open()
	l, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	for range 3 {
		again, err := b.open().AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
		require.NoError(t, err)
		require.Equal(t, l, again, "the holder re-acquiring renews, same epoch")
		require.NoError(t, s.RenewLease(ctx, l, time.Minute))
	}
	got, err := s.LeaseHolder(ctx, testLeaseName)
	require.NoError(t, err)
	require.Equal(t, l, got)
}

func testLeaseHeldByAnother(t *testing.T, b leaseBackend) {
	ctx, a, other := testCtx(t), b.open(), b.open()
	l, err := a.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)

	got, err := other.AcquireLease(ctx, testLeaseName, "conductor-b", time.Minute)
	require.ErrorIs(t, err, ErrLeaseHeld)
	require.Contains(t, err.Error(), `"conductor-a"`, "the message names the holder")
	require.Zero(t, got)
	var held *HeldError
	require.ErrorAs(t, err, &held)
	require.Equal(t, l, held.Holder)
	require.True(t, held.Remaining > 50*time.Second && held.Remaining <= time.Minute,
		"how long the holder's lease has left: %v of a minute", held.Remaining)
	// Renewing a lease b never had, even at a's epoch, is refused.
	err = other.RenewLease(ctx, Lease{Name: testLeaseName, Owner: "conductor-b", Epoch: l.Epoch}, time.Minute)
	require.ErrorIs(t, err, ErrLeaseLost)

	holder, err := a.LeaseHolder(ctx, testLeaseName)
	require.NoError(t, err)
	require.Equal(t, l, holder, "a refused acquire changes nothing")
}

func testLeaseExpiryAndTakeover(t *testing.T, b leaseBackend) {
	ctx, a, other := testCtx(t), b.open(), b.open()
	la, err := a.AcquireLease(ctx, testLeaseName, "conductor-a", b.short)
	require.NoError(t, err)
	b.expire(t, testLeaseName)

	_, err = a.LeaseHolder(ctx, testLeaseName)
	require.ErrorIs(t, err, ErrNotFound, "an expired lease is free")
	require.ErrorIs(t, a.RenewLease(ctx, la, time.Minute), ErrLeaseLost, "renewing after expiry")

	lb, err := other.AcquireLease(ctx, testLeaseName, "conductor-b", time.Minute)
	require.NoError(t, err)
	require.Equal(t, Lease{Name: testLeaseName, Owner: "conductor-b", Epoch: la.Epoch + 1}, lb,
		"the epoch survives expiry and moves on")

	err = a.RenewLease(ctx, la, time.Minute)
	require.ErrorIs(t, err, ErrLeaseLost, "renewing after a takeover")
	require.Contains(t, err.Error(), `"conductor-b"`)
	_, err = a.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.ErrorIs(t, err, ErrLeaseHeld)
	require.NoError(t, a.ReleaseLease(ctx, la), "releasing a lost lease is no error")
	holder, err := other.LeaseHolder(ctx, testLeaseName)
	require.NoError(t, err)
	require.Equal(t, lb, holder, "and takes nothing from the new holder")
}

func testLeaseReleaseThenAcquire(t *testing.T, b leaseBackend) {
	ctx, a, other := testCtx(t), b.open(), b.open()
	la, err := a.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	require.NoError(t, a.ReleaseLease(ctx, la))
	_, err = a.LeaseHolder(ctx, testLeaseName)
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, a.RenewLease(ctx, la, time.Minute), ErrLeaseLost, "renewing after release")
	require.NoError(t, a.ReleaseLease(ctx, la), "releasing twice is no error")

	lb, err := other.AcquireLease(ctx, testLeaseName, "conductor-b", time.Minute)
	require.NoError(t, err)
	require.Equal(t, la.Epoch+1, lb.Epoch)
	require.NoError(t, a.ReleaseLease(ctx, la), "a stale release")
	holder, err := a.LeaseHolder(ctx, testLeaseName)
	require.NoError(t, err)
	require.Equal(t, lb, holder, "a stale release frees nothing")
}

func testLeaseReleaseByNonHolder(t *testing.T, b leaseBackend) {
	ctx, a, other := testCtx(t), b.open(), b.open()
	la, err := a.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	for _, l := range []Lease{
		{Name: testLeaseName, Owner: "conductor-b", Epoch: la.Epoch},
		{Name: testLeaseName, Owner: "conductor-a", Epoch: la.Epoch + 1},
		{Name: testLeaseName, Owner: "conductor-a", Epoch: la.Epoch - 1},
		{Name: testLeaseName, Owner: "conductor-a", Epoch: 1}, // the first epoch before it followed the clock
		{Name: testLeaseName, Owner: "conductor-b", Epoch: 99},
		{Name: "conductor/partition/18", Owner: "conductor-a", Epoch: la.Epoch},
	} {
		require.NoError(t, other.ReleaseLease(ctx, l), "%+v", l)
	}
	holder, err := a.LeaseHolder(ctx, testLeaseName)
	require.NoError(t, err)
	require.Equal(t, la, holder)
	require.NoError(t, a.RenewLease(ctx, la, time.Minute))
}

// testLeaseStaleEpochSameOwner: an owner that released and re-acquired has a
// new epoch; its old lease value is lost even though the owner is the same.
func testLeaseStaleEpochSameOwner(t *testing.T, b leaseBackend) {
	ctx, s := testCtx(t), b.open()
	old, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.ReleaseLease(ctx, old))
	cur, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, old.Epoch+1, cur.Epoch, "taking a free lease is a new epoch, same owner or not")

	require.ErrorIs(t, s.RenewLease(ctx, old, time.Minute), ErrLeaseLost)
	require.NoError(t, s.ReleaseLease(ctx, old))
	holder, err := s.LeaseHolder(ctx, testLeaseName)
	require.NoError(t, err)
	require.Equal(t, cur, holder, "releasing the old epoch frees nothing")
}

// testLeaseEpochsNeverDecrease alternates two owners over 100 acquisitions,
// ended by release or, now and then, by expiry: the first is the store's
// clock plus one, each later one exactly one more.
func testLeaseEpochsNeverDecrease(t *testing.T, b leaseBackend) {
	ctx := testCtx(t)
	stores := [2]Leases{b.open(), b.open()}
	var last uint64
	for i := range 100 {
		owner := fmt.Sprintf("conductor-%d", i%2)
		expire := i%25 == 24
		ttl := time.Minute
		if expire {
			ttl = b.short
		}
		l, err := stores[i%2].AcquireLease(ctx, testLeaseName, owner, ttl)
		require.NoError(t, err, "acquisition %d", i)
		if i == 0 {
			b.requireFirst(t, l.Epoch)
		} else {
			require.Equal(t, last+1, l.Epoch, "acquisition %d", i)
		}
		require.Equal(t, owner, l.Owner)
		last = l.Epoch
		if expire {
			b.expire(t, testLeaseName)
		} else {
			require.NoError(t, stores[i%2].ReleaseLease(ctx, l))
		}
	}
}

// testLeaseRace has 8 owners, each with its own client, grab one lease for
// 200 rounds, releasing it whenever they got it. No two may ever believe
// they hold it at once, every epoch has exactly one owner, and the epochs
// handed out are base, base+1, base+2... without a gap, base being the
// store's clock plus one.
func testLeaseRace(t *testing.T, b leaseBackend) {
	const owners, rounds = 8, 200
	ctx := testCtx(t)
	type grant struct {
		epoch uint64
		owner string
	}
	var (
		believers atomic.Int32 // owners currently believing they hold it
		overlaps  atomic.Int32
		mu        sync.Mutex
		grants    []grant
	)
	errs := make([]error, owners)
	stores := make([]Leases, owners)
	for i := range stores {
		stores[i] = b.open()
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range owners {
		owner := fmt.Sprintf("conductor-%d", i)
		wg.Go(func() {
			<-start
			s := stores[i]
			for range rounds {
				l, err := s.AcquireLease(ctx, testLeaseName, owner, time.Minute)
				if errors.Is(err, ErrLeaseHeld) {
					runtime.Gosched()
					continue
				}
				if err != nil {
					errs[i] = err
					return
				}
				if !believers.CompareAndSwap(0, 1) {
					overlaps.Add(1)
				}
				mu.Lock()
				grants = append(grants, grant{l.Epoch, l.Owner})
				mu.Unlock()
				if l.Owner != owner {
					errs[i] = fmt.Errorf("%s got a lease of %s", owner, l.Owner)
					return
				}
				believers.Add(-1)
				if err := s.ReleaseLease(ctx, l); err != nil {
					errs[i] = err
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	require.Zero(t, overlaps.Load(), "two owners believed they held the lease at once")
	require.NotEmpty(t, grants)

	ownerOf := map[uint64]string{}
	base := grants[0].epoch
	for _, g := range grants {
		prev, dup := ownerOf[g.epoch]
		require.False(t, dup, "epoch %d granted to %s and %s", g.epoch, prev, g.owner)
		ownerOf[g.epoch] = g.owner
		base = min(base, g.epoch)
	}
	b.requireFirst(t, base)
	for e := range uint64(len(grants)) {
		if _, ok := ownerOf[base+e]; !ok {
			t.Fatalf("epoch %d never granted; want epochs %d..%d, each granted once", base+e, base, base+uint64(len(grants))-1)
		}
	}
	_, err := stores[0].LeaseHolder(ctx, testLeaseName)
	require.ErrorIs(t, err, ErrNotFound, "every grant was released")
	t.Logf("%d grants to %d owners over %d rounds", len(grants), owners, rounds)
}

func testLeaseInvalidArguments(t *testing.T, b leaseBackend) {
	ctx, s := testCtx(t), b.open()
	good := Lease{Name: testLeaseName, Owner: "conductor-a", Epoch: 1}
	names := map[string]string{
		"empty name":     "",
		"long name":      strings.Repeat("n", MaxLeaseNameLen+1),
		"brace":          "conductor/{partition}/17",
		"closing brace":  "p}",
		"control byte":   "p\n17",
		"non-ASCII name": "partition/ü",
		"DEL byte":       "p\x7f",
	}
	owners := map[string]string{
		"empty owner":     "",
		"long owner":      strings.Repeat("o", MaxLeaseNameLen+1),
		"tab in owner":    "conductor\ta",
		"non-ASCII owner": "conductor-é",
	}
	ttls := map[string]time.Duration{
		"zero ttl":     0,
		"negative ttl": -time.Second,
		"tiny ttl":     MinLeaseTTL - time.Nanosecond,
		"huge ttl":     MaxLeaseTTL + time.Millisecond,
	}
	check := func(what string, err error) {
		t.Helper()
		require.ErrorIs(t, err, ErrInvalid, what)
	}
	for what, name := range names {
		_, err := s.AcquireLease(ctx, name, good.Owner, time.Minute)
		check("acquire, "+what, err)
		check("renew, "+what, s.RenewLease(ctx, Lease{Name: name, Owner: good.Owner, Epoch: 1}, time.Minute))
		check("release, "+what, s.ReleaseLease(ctx, Lease{Name: name, Owner: good.Owner, Epoch: 1}))
		_, err = s.LeaseHolder(ctx, name)
		check("holder, "+what, err)
	}
	for what, owner := range owners {
		_, err := s.AcquireLease(ctx, testLeaseName, owner, time.Minute)
		check("acquire, "+what, err)
		check("renew, "+what, s.RenewLease(ctx, Lease{Name: testLeaseName, Owner: owner, Epoch: 1}, time.Minute))
		check("release, "+what, s.ReleaseLease(ctx, Lease{Name: testLeaseName, Owner: owner, Epoch: 1}))
	}
	for what, ttl := range ttls {
		_, err := s.AcquireLease(ctx, testLeaseName, good.Owner, ttl)
		check("acquire, "+what, err)
		check("renew, "+what, s.RenewLease(ctx, good, ttl))
	}
	zero := good
	zero.Epoch = 0
	check("renew, epoch 0", s.RenewLease(ctx, zero, time.Minute))
	check("release, epoch 0", s.ReleaseLease(ctx, zero))

	_, err := s.LeaseHolder(ctx, testLeaseName)
	require.ErrorIs(t, err, ErrNotFound, "refused calls store nothing")
	// The bounds themselves are fine.
	l, err := s.AcquireLease(ctx, strings.Repeat("n", MaxLeaseNameLen), strings.Repeat("o", MaxLeaseNameLen), MinLeaseTTL)
	require.NoError(t, err)
	require.NoError(t, s.RenewLease(ctx, l, MaxLeaseTTL))
	b.requireFirst(t, l.Epoch)
	// Refused calls used no epoch: the first grant of the name they named
	// is still a first epoch.
	l, err = s.AcquireLease(ctx, testLeaseName, good.Owner, time.Minute)
	require.NoError(t, err)
	b.requireFirst(t, l.Epoch)
}

func testLeaseCanceledContext(t *testing.T, b leaseBackend) {
	s := b.open()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	l := Lease{Name: testLeaseName, Owner: "conductor-a", Epoch: 1}
	_, err := s.AcquireLease(ctx, l.Name, l.Owner, time.Minute)
	require.ErrorIs(t, err, ErrUnavailable)
	require.ErrorIs(t, err, context.Canceled)
	for op, err := range map[string]error{
		"renew":   s.RenewLease(ctx, l, time.Minute),
		"release": s.ReleaseLease(ctx, l),
		"holder":  func() error { _, err := s.LeaseHolder(ctx, l.Name); return err }(),
	} {
		require.ErrorIs(t, err, ErrUnavailable, op)
		require.ErrorIs(t, err, context.Canceled, op)
	}
}

func testLeaseNamesAreIndependent(t *testing.T, b leaseBackend) {
	ctx, s := testCtx(t), b.open()
	var base uint64
	for i := range 3 {
		l, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
		require.NoError(t, err)
		if i == 0 {
			b.requireFirst(t, l.Epoch)
			base = l.Epoch
		}
		require.Equal(t, base+uint64(i), l.Epoch)
		require.NoError(t, s.ReleaseLease(ctx, l))
	}
	other, err := s.AcquireLease(ctx, "conductor/partition/18", "conductor-b", time.Minute)
	require.NoError(t, err)
	b.requireFirst(t, other.Epoch) // each name counts its own epochs
	l, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, base+3, l.Epoch, "another name's grant took no epoch of this one")
}

// testLeaseOddOwner: owners and names may hold any printable ASCII,
// spaces and separators included.
func testLeaseOddOwner(t *testing.T, b leaseBackend) {
	ctx, s := testCtx(t), b.open()
	const name, owner = "lease with spaces: a/b:c", " host 7 {pid 12} 42 "
	l, err := s.AcquireLease(ctx, name, owner, time.Minute)
	require.NoError(t, err)
	b.requireFirst(t, l.Epoch)
	require.Equal(t, Lease{Name: name, Owner: owner, Epoch: l.Epoch}, l)
	got, err := s.LeaseHolder(ctx, name)
	require.NoError(t, err)
	require.Equal(t, l, got)
	require.NoError(t, s.RenewLease(ctx, l, time.Minute))
	_, err = s.AcquireLease(ctx, name, strings.TrimSpace(owner), time.Minute)
	require.ErrorIs(t, err, ErrLeaseHeld)
	require.NoError(t, s.ReleaseLease(ctx, l))
	_, err = s.LeaseHolder(ctx, name)
	require.ErrorIs(t, err, ErrNotFound)
}

func TestMemoryLeaseClock(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s := NewMemory(Config{Now: clk.Now})
	ctx := testCtx(t)
	l, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, uint64(1_700_000_001), l.Epoch, "the first epoch is the clock's Unix seconds plus one")

	clk.Advance(50 * time.Second)
	again, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, l, again)
	clk.Advance(50 * time.Second) // 100 s after acquiring, 50 s after renewing
	require.NoError(t, s.RenewLease(ctx, l, 10*time.Second))
	clk.Advance(10*time.Second - time.Millisecond)
	_, err = s.LeaseHolder(ctx, testLeaseName)
	require.NoError(t, err, "still held a millisecond before expiry")
	clk.Advance(time.Millisecond)
	_, err = s.LeaseHolder(ctx, testLeaseName)
	require.ErrorIs(t, err, ErrNotFound, "free at the expiry instant")

	// Another Memory has leases of its own: its first epoch follows the
	// clock at that first acquisition, 110 s on.
	other, err := NewMemory(Config{Now: clk.Now}).AcquireLease(ctx, testLeaseName, "conductor-b", time.Minute)
	require.NoError(t, err)
	require.Equal(t, uint64(1_700_000_111), other.Epoch)
	// While this one goes on counting from its own first epoch, whatever
	// the clock did since.
	next, err := s.AcquireLease(ctx, testLeaseName, "conductor-b", time.Minute)
	require.NoError(t, err)
	require.Equal(t, l.Epoch+1, next.Epoch)
	// A name first taken later starts from the clock then.
	late, err := s.AcquireLease(ctx, "conductor/partition/18", "conductor-a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, uint64(1_700_000_111), late.Epoch)

	// On a clock at the Unix epoch, the first epoch is 1, and 0 is never
	// handed out.
	zero := NewMemory(Config{Now: (&fakeClock{now: time.Unix(0, 0)}).Now})
	first, err := zero.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, uint64(1), first.Epoch)
	require.NoError(t, zero.ReleaseLease(ctx, first))
	second, err := zero.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, uint64(2), second.Epoch)
}

func TestRedisLeaseKeys(t *testing.T) {
	s, raw := newTestRedis(t, Config{})
	ctx := testCtx(t)
	l, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", 30*time.Second)
	require.NoError(t, err)
	requireFirstEpochNow(t, l.Epoch)

	tag := "{lease:" + testLeaseName + "}"
	holderKey, epochKey := tag+":holder", tag+":epoch"
	keys, err := raw.Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.ElementsMatch(t, []string{holderKey, epochKey}, keys, "one hash tag, one slot")
	v, err := raw.Get(ctx, holderKey).Result()
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("%d conductor-a", l.Epoch), v)
	requirePTTL := func(key string, lo, hi time.Duration) {
		t.Helper()
		got, err := raw.PTTL(ctx, key).Result()
		require.NoError(t, err)
		require.True(t, got > lo && got <= hi, "PTTL of %s is %v, want in (%v, %v]", key, got, lo, hi)
	}
	requirePTTL(holderKey, 20*time.Second, 30*time.Second)
	ttl, err := raw.PTTL(ctx, epochKey).Result()
	require.NoError(t, err)
	require.Equal(t, time.Duration(-1), ttl, "the epoch counter never expires")

	require.NoError(t, raw.PExpire(ctx, holderKey, time.Second).Err())
	require.NoError(t, s.RenewLease(ctx, l, 45*time.Second))
	requirePTTL(holderKey, 35*time.Second, 45*time.Second)
	require.NoError(t, raw.PExpire(ctx, holderKey, time.Second).Err())
	_, err = s.AcquireLease(ctx, testLeaseName, "conductor-a", 40*time.Second)
	require.NoError(t, err)
	requirePTTL(holderKey, 30*time.Second, 40*time.Second)

	require.NoError(t, s.ReleaseLease(ctx, l))
	keys, err = raw.Keys(ctx, "*").Result()
	require.NoError(t, err)
	require.Equal(t, []string{epochKey}, keys, "release deletes the holder, keeps the counter")
	n, err := raw.Get(ctx, epochKey).Result()
	require.NoError(t, err)
	require.Equal(t, fmt.Sprint(l.Epoch), n, "the counter holds the last epoch handed out")
}

// TestRedisLeaseCounterLost: if the epoch counter disappears while a holder
// lives (an operator's DEL), the next epoch still goes past the holder's.
func TestRedisLeaseCounterLost(t *testing.T) {
	s, raw := newTestRedis(t, Config{})
	ctx := testCtx(t)
	var base uint64
	for i := range 5 {
		l, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
		require.NoError(t, err)
		if i == 0 {
			requireFirstEpochNow(t, l.Epoch)
			base = l.Epoch
		}
		require.Equal(t, base+uint64(i), l.Epoch)
		require.NoError(t, s.ReleaseLease(ctx, l))
	}
	l, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
	require.NoError(t, err)
	require.Equal(t, base+5, l.Epoch)
	require.NoError(t, raw.Del(ctx, leaseEpochKey(testLeaseName)).Err())
	require.NoError(t, s.ReleaseLease(ctx, l))
	next, err := s.AcquireLease(ctx, testLeaseName, "conductor-b", time.Minute)
	require.NoError(t, err)
	require.Equal(t, l.Epoch+1, next.Epoch)
}

// TestRedisLeaseDataLost: a Redis that lost its data (restarted without
// persistence, failed over to a replica that had not seen the counter) has
// neither the holder nor the epoch counter. The next epoch must still be
// above every epoch handed out before, so the holder it had stays fenced
// off. That holds while takeovers of the name average less than one a
// second since its first epoch (see Leases), so the test waits out the
// seconds its five quick takeovers ran ahead of the clock.
func TestRedisLeaseDataLost(t *testing.T) {
	backends := map[string]func(t *testing.T) (*Redis, *redis.Client){
		"redis": func(t *testing.T) (*Redis, *redis.Client) { return newTestRedis(t, Config{}) },
		"embedredis": func(t *testing.T) (*Redis, *redis.Client) {
			srv, err := embedredis.Start(nil)
			require.NoError(t, err)
			t.Cleanup(srv.Close)
			s, err := OpenRedis(srv.URL(), Config{})
			require.NoError(t, err)
			opt, err := redis.ParseURL(srv.URL())
			require.NoError(t, err)
			raw := redis.NewClient(opt)
			t.Cleanup(func() {
				require.NoError(t, s.Close())
				require.NoError(t, raw.Close())
			})
			return s, raw
		},
	}
	for name, open := range backends {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s, raw := open(t)
			ctx := testCtx(t)
			var granted []Lease
			for i := range 5 {
				l, err := s.AcquireLease(ctx, testLeaseName, fmt.Sprintf("conductor-%d", i), time.Minute)
				require.NoError(t, err)
				granted = append(granted, l)
				if i < 4 { // the last one still holds it when the data goes
					require.NoError(t, s.ReleaseLease(ctx, l))
				}
			}
			requireFirstEpochNow(t, granted[0].Epoch)
			last := granted[len(granted)-1]
			require.Equal(t, granted[0].Epoch+4, last.Epoch)

			// Five takeovers in five seconds: wait until the server's
			// clock has reached the last epoch.
			testenv.CheckFor(t, 7*time.Second, 50*time.Millisecond, func() error {
				now, err := raw.Time(ctx).Result()
				if err != nil {
					return err
				}
				if uint64(now.Unix()) < last.Epoch {
					return fmt.Errorf("server clock at %d s, last epoch %d", now.Unix(), last.Epoch)
				}
				return nil
			})

			n, err := raw.Del(ctx, leaseHolderKey(testLeaseName), leaseEpochKey(testLeaseName)).Result()
			require.NoError(t, err)
			require.Equal(t, int64(2), n, "both keys were there to lose")

			next, err := s.AcquireLease(ctx, testLeaseName, "conductor-new", time.Minute)
			require.NoError(t, err)
			requireFirstEpochNow(t, next.Epoch)
			for _, l := range granted {
				require.Greater(t, next.Epoch, l.Epoch, "epoch after the loss vs. %+v granted before", l)
			}
			// The holder from before the loss stays fenced off.
			require.ErrorIs(t, s.RenewLease(ctx, last, time.Minute), ErrLeaseLost)
			require.NoError(t, s.ReleaseLease(ctx, last))
			holder, err := s.LeaseHolder(ctx, testLeaseName)
			require.NoError(t, err)
			require.Equal(t, next, holder)
		})
	}
}

func TestRedisLeaseCorrupt(t *testing.T) {
	s, raw := newTestRedis(t, Config{})
	ctx := testCtx(t)
	holderKey := leaseHolderKey(testLeaseName)
	for name, plant := range map[string]func() error{
		"garbage":        func() error { return raw.Set(ctx, holderKey, "\x00\xffnot a holder", 0).Err() },
		"empty":          func() error { return raw.Set(ctx, holderKey, "", 0).Err() },
		"no owner":       func() error { return raw.Set(ctx, holderKey, "12", 0).Err() },
		"empty owner":    func() error { return raw.Set(ctx, holderKey, "12 ", 0).Err() },
		"epoch not num":  func() error { return raw.Set(ctx, holderKey, "x conductor-a", 0).Err() },
		"epoch zero":     func() error { return raw.Set(ctx, holderKey, "0 conductor-a", 0).Err() },
		"leading zero":   func() error { return raw.Set(ctx, holderKey, "07 conductor-a", 0).Err() },
		"negative epoch": func() error { return raw.Set(ctx, holderKey, "-3 conductor-a", 0).Err() },
		"huge epoch":     func() error { return raw.Set(ctx, holderKey, "123456789012345678901 conductor-a", 0).Err() },
		"control owner":  func() error { return raw.Set(ctx, holderKey, "3 conductor\x01", 0).Err() },
		"wrong type":     func() error { return raw.HSet(ctx, holderKey, "owner", "conductor-a").Err() },
	} {
		t.Run(name, func(t *testing.T) {
			require.NoError(t, raw.FlushAll(ctx).Err())
			require.NoError(t, plant())
			before, err := raw.Dump(ctx, holderKey).Result()
			require.NoError(t, err)
			l := Lease{Name: testLeaseName, Owner: "conductor-a", Epoch: 3}

			_, err = s.AcquireLease(ctx, l.Name, l.Owner, time.Minute)
			requireCorrupt(t, err, holderKey)
			requireCorrupt(t, s.RenewLease(ctx, l, time.Minute), holderKey)
			requireCorrupt(t, s.ReleaseLease(ctx, l), holderKey)
			_, err = s.LeaseHolder(ctx, l.Name)
			requireCorrupt(t, err, holderKey)

			after, err := raw.Dump(ctx, holderKey).Result()
			require.NoError(t, err)
			require.Equal(t, before, after, "a corrupt holder is left for an operator")
			n, err := raw.Exists(ctx, leaseEpochKey(testLeaseName)).Result()
			require.NoError(t, err)
			require.Zero(t, n, "no epoch was handed out")
		})
	}

	t.Run("counter", func(t *testing.T) {
		require.NoError(t, raw.FlushAll(ctx).Err())
		epochKey := leaseEpochKey(testLeaseName)
		require.NoError(t, raw.Set(ctx, epochKey, "many", 0).Err())
		_, err := s.AcquireLease(ctx, testLeaseName, "conductor-a", time.Minute)
		requireCorrupt(t, err, epochKey)
		_, err = s.LeaseHolder(ctx, testLeaseName)
		require.ErrorIs(t, err, ErrNotFound, "nothing was taken")
		v, err := raw.Get(ctx, epochKey).Result()
		require.NoError(t, err)
		require.Equal(t, "many", v)
	})
}

func requireCorrupt(t *testing.T, err error, key string) {
	t.Helper()
	require.ErrorIs(t, err, ErrCorrupt)
	require.Contains(t, err.Error(), key, "the error names the key")
}

// TestRedisLeaseDown: with Redis stopped or hung, every lease operation
// fails with ErrUnavailable within its own bound, even under a generous
// context, and never panics.
func TestRedisLeaseDown(t *testing.T) {
	for name, down := range map[string]func(*testing.T, *testenv.RedisServer){
		"stopped": func(_ *testing.T, srv *testenv.RedisServer) { srv.Stop() },
		"hung": func(t *testing.T, srv *testenv.RedisServer) {
			require.NoError(t, srv.Signal(syscall.SIGSTOP))
			t.Cleanup(func() { _ = srv.Signal(syscall.SIGCONT) })
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := testenv.Redis(t)
			s, _ := openTestRedis(t, srv, Config{})
			l, err := s.AcquireLease(testCtx(t), testLeaseName, "conductor-a", time.Minute)
			require.NoError(t, err)
			down(t, srv)

			ops := map[string]func(context.Context) error{
				"acquire": func(ctx context.Context) error {
					_, err := s.AcquireLease(ctx, testLeaseName, "conductor-b", time.Minute)
					return err
				},
				"renew":   func(ctx context.Context) error { return s.RenewLease(ctx, l, time.Minute) },
				"release": func(ctx context.Context) error { return s.ReleaseLease(ctx, l) },
				"holder":  func(ctx context.Context) error { _, err := s.LeaseHolder(ctx, l.Name); return err },
			}
			for op, f := range ops {
				start := time.Now()
				err := f(testCtx(t)) // 10 s: the op's own bound must cut it short
				require.ErrorIs(t, err, ErrUnavailable, op)
				require.NotErrorIs(t, err, ErrLeaseHeld, op)
				require.NotErrorIs(t, err, ErrLeaseLost, op)
				require.Less(t, time.Since(start), leaseOpTimeout+time.Second, "%s took too long", op)
				t.Logf("%s: %v", op, err)
			}
		})
	}
}
