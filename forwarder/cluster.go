package forwarder

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callrelay/callrelay/protocol"
	"github.com/callrelay/callrelay/statestore"
)

// Cluster is what a forwarder needs to serve calls whose members sit on
// several forwarders, and to let any forwarder take a call over.
//
//   - Store holds each call's critical state (who is in it, which forwarder
//     serves whom); every change is written there before it is acknowledged,
//     through a bounded queue that keeps changes while the store is down.
//   - NATS carries change notices per call (a new member on C is heard on A
//     and B within milliseconds) and every forwarder's heartbeat and load.
//   - The trunk is a separate UDP socket: one authenticated copy of each
//     packet crosses to each other forwarder of the call, which fans it out.
//     Forwarders also send each other trunk keepalives, so each hears the
//     others without NATS (liveness.go).
//
// A zero TrunkListen means the forwarder runs on its own (the other fields
// are then ignored, except Store, which still records state).
type Cluster struct {
	// ID names this forwarder in the cluster and in the state store. It
	// should stay the same across restarts of the same forwarder.
	ID string
	// Region labels where this forwarder runs (0..32 printable ASCII
	// bytes, no space; empty: none), told to dashboards in the load
	// reports.
	Region string
	// TrunkListen is the internal UDP ip:port for trunk frames.
	TrunkListen string
	// TrunkAdvertise is the trunk address other forwarders send to. Default:
	// the bound trunk address, which must then not be unspecified.
	TrunkAdvertise netip.AddrPort
	// MediaAdvertise is the address devices join, as told to other
	// forwarders (for Try Alternate and migration). Default: the bound
	// media address, which must then not be unspecified.
	MediaAdvertise netip.AddrPort
	// MediaAdvertise6 is a dual-stack forwarder's IPv6 media address, told
	// to other forwarders beside the IPv4 MediaAdvertise (so an IPv6 device
	// is sent the IPv6 one in Try Alternate and MigrateTo). It needs a media
	// socket on [::] (both families on the one port). Default: none.
	MediaAdvertise6 netip.AddrPort
	// Key authenticates trunk frames and cluster messages.
	Key protocol.ClusterKey
	// Store keeps critical call state; nil keeps none (no takeover). If it
	// also grants leases (statestore.Leases: Redis and Memory do), the
	// forwarder holds its liveness lease there, and removes another
	// forwarder's members only once that one's lease has lapsed; without
	// leases it never removes them.
	Store statestore.Store
	// NATS carries notices and heartbeats; required with a trunk. It must
	// deliver the forwarder's own messages back to it (not nats.NoEcho):
	// hearing its own heartbeat is how a forwarder knows NATS reaches it,
	// and without that it never takes a peer for dead.
	NATS *nats.Conn
	// Subject is the prefix of every NATS subject used.
	Subject string

	// StateQueue bounds the changes waiting for the store.
	StateQueue int
	// ReconcileEvery is how often each call's view is checked against the
	// store and its TTL refreshed (must be well under the store's TTL).
	ReconcileEvery time.Duration
	// AnnounceEvery is the heartbeat (and trunk keepalive) interval; a
	// peer silent on NATS and the trunk for PeerTimeout is taken for dead,
	// unless the fault may be ours (README 6.2: our NATS down, or every
	// peer silent at once).
	AnnounceEvery, PeerTimeout time.Duration
	// OrphanAfter: a member the store places on a forwarder that has been
	// dead (or unknown) for this long, and whose liveness lease has lapsed,
	// is removed by whoever sees it.
	OrphanAfter time.Duration

	// Partitions is the number of conductor partitions calls hash into
	// (protocol.PartitionOf); every forwarder and conductor of a cluster
	// must use the same number.
	Partitions int
	// MetadataEvery is the metadata tick: audio summaries go to the
	// conductors this often (with NATS, an ID and a cluster key).
	MetadataEvery time.Duration

	// SpillLevel and SpillBudget govern regional spill-over
	// (region_spill.go): a join refused for load while every forwarder of
	// this region is at SpillLevel or above is sent to the nearest other
	// region (by trunk RTT) with room, if that RTT is within SpillBudget.
	// Without a Region they are unused.
	SpillLevel  ThrottleLevel
	SpillBudget time.Duration
}

// DefaultCluster returns the tuning defaults, with the cluster off.
func DefaultCluster() Cluster {
	return Cluster{
		Subject:        "callrelay",
		StateQueue:     16384,
		ReconcileEvery: 5 * time.Second,
		AnnounceEvery:  time.Second,
		PeerTimeout:    3 * time.Second,
		OrphanAfter:    10 * time.Second,
		Partitions:     DefaultPartitions,
		MetadataEvery:  100 * time.Millisecond,
		SpillLevel:     ThrottleNewOneToOne,
		SpillBudget:    60 * time.Millisecond,
	}
}

func (c *Cluster) enabled() bool { return c.TrunkListen != "" }

// DefaultPartitions is the default number of conductor partitions.
const DefaultPartitions = 64

func (c *Cluster) validate() error {
	var errs []error
	if c.Partitions < 1 || c.Partitions > 65535 {
		errs = append(errs, fmt.Errorf("forwarder: %d conductor partitions, want 1..65535 (the same on every forwarder and conductor)", c.Partitions))
	}
	if c.MetadataEvery < 10*time.Millisecond || c.MetadataEvery > 10*time.Second {
		errs = append(errs, fmt.Errorf("forwarder: metadata tick %s, want 10ms..10s", c.MetadataEvery))
	}
	if err := protocol.ValidRegion(c.Region); err != nil {
		errs = append(errs, fmt.Errorf("forwarder: region (--region): %w", err))
	}
	if c.SpillLevel < ThrottleNewGroup || c.SpillLevel > ThrottleSecondParty || c.SpillBudget < 0 {
		errs = append(errs, fmt.Errorf("forwarder: spill level %d and budget %s: want a level 1..4 and a budget >= 0", c.SpillLevel, c.SpillBudget))
	}
	if c.Store != nil || c.enabled() {
		if err := protocol.ValidForwarderID(c.ID); err != nil {
			errs = append(errs, fmt.Errorf("forwarder: cluster id (--id), the same across restarts: %w", err))
		}
		if c.StateQueue < 1 || c.ReconcileEvery <= 0 {
			errs = append(errs, fmt.Errorf("forwarder: state queue %d and reconcile interval %s must be positive", c.StateQueue, c.ReconcileEvery))
		}
	}
	if !c.enabled() {
		return errors.Join(errs...)
	}
	if _, err := netip.ParseAddrPort(c.TrunkListen); err != nil {
		errs = append(errs, fmt.Errorf("forwarder: trunk listen address %q: want ip:port, e.g. 10.0.0.5:7000", c.TrunkListen))
	}
	if c.Key.IsZero() {
		errs = append(errs, errors.New("forwarder: no cluster key: give the same 64-hex-digit key to every forwarder (--cluster-key or CALLRELAY_CLUSTER_KEY; `callrelay token cluster-key` makes one)"))
	}
	if c.NATS == nil {
		errs = append(errs, errors.New("forwarder: a trunk needs NATS for change notices (--nats-url)"))
	}
	if c.Subject == "" {
		errs = append(errs, errors.New("forwarder: empty NATS subject prefix"))
	}
	if c.AnnounceEvery <= 0 || c.PeerTimeout < 2*c.AnnounceEvery || c.OrphanAfter < c.PeerTimeout {
		errs = append(errs, fmt.Errorf("forwarder: announce every %s, peer timeout %s, orphan after %s: want peer timeout >= 2 announces and orphan after >= peer timeout",
			c.AnnounceEvery, c.PeerTimeout, c.OrphanAfter))
	}
	return errors.Join(errs...)
}

// Subjects. Per-call subjects let a forwarder hear only about the calls it
// serves; NATS interest makes each notice cross only to those.
func (c *Cluster) callSubject(id protocol.ID) string { return protocol.CallSubject(c.Subject, id) }
func (c *Cluster) announceSubject() string           { return protocol.ForwardersSubject(c.Subject) }
