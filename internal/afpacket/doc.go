// Package afpacket moves UDP datagrams over IPv4 as raw Ethernet frames on
// a Linux AF_PACKET socket: the load generator's way around the kernel's
// socket stack (loadtest's fast engine, --fast-io packet). A Conn sends
// frames it builds itself (Ethernet, IPv4 with its header checksum, UDP
// with a zero checksum, RFC 768), from any source address, in batches
// (sendmmsg on the packet socket, PACKET_QDISC_BYPASS), and reads the
// frames for its UDP port from a TPACKET_V3 receive ring (mmap, block
// based, poll), with the kernel's arrival time of each.
//
// It is for a veth pair the caller set up, typically one end in a network
// namespace of the generator's (Config.NetNS): it resolves no neighbours
// (every frame goes to Config.Gateway), fragments nothing and answers
// nothing (no ARP, no ICMP). It must never be used on a shared network.
package afpacket
