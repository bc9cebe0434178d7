package loadtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/stretchr/testify/require"

	"github.com/callrelay/callrelay/client"
)

// ChannelData (RFC 8656 12.4): channel number, length, data; padding after
// the data (UDP may carry it) is not data; anything else is refused.
func TestParseChannelData(t *testing.T) {
	frame := make([]byte, channelHeader+5)
	putChannelHeader(frame, 0x4001, 5)
	copy(frame[channelHeader:], "hello")
	require.Equal(t, []byte{0x40, 0x01, 0x00, 0x05}, frame[:channelHeader])
	for _, tc := range []struct {
		name string
		b    []byte
		ch   uint16
		data string
		ok   bool
	}{
		{"frame", frame, 0x4001, "hello", true},
		{"padded", append(append([]byte(nil), frame...), 0, 0, 0), 0x4001, "hello", true},
		{"empty data", []byte{0x4f, 0xff, 0, 0}, 0x4fff, "", true},
		{"cut", frame[:channelHeader+4], 0, "", false},
		{"short header", []byte{0x40, 0x00, 0}, 0, "", false},
		{"below the channels", []byte{0x3f, 0xff, 0, 0}, 0, "", false},
		{"above the channels", []byte{0x50, 0x00, 0, 0}, 0, "", false},
		{"RTP", []byte{0x80, 0x6f, 0, 1, 0, 0, 0, 0}, 0, "", false},
	} {
		ch, data, ok := parseChannelData(tc.b)
		require.Equal(t, tc.ok, ok, tc.name)
		require.Equal(t, tc.ch, ch, tc.name)
		require.Equal(t, tc.data, string(data), tc.name)
	}
}

// Parsed ChannelData written again parses to the same channel and data.
func FuzzParseChannelData(f *testing.F) {
	f.Add([]byte{0x40, 0x00, 0x00, 0x02, 0xaa, 0xbb})
	f.Add([]byte{0x40, 0x00, 0x00, 0x03, 0xaa})
	f.Fuzz(func(t *testing.T, b []byte) {
		ch, data, ok := parseChannelData(b)
		if !ok {
			return
		}
		again := make([]byte, channelHeader+len(data))
		putChannelHeader(again, ch, len(data))
		copy(again[channelHeader:], data)
		ch2, data2, ok2 := parseChannelData(again)
		if !ok2 || ch2 != ch || !bytes.Equal(data, data2) {
			t.Fatalf("%x: %#x %x, again %v %#x %x", b, ch, data, ok2, ch2, data2)
		}
	})
}

// A device on a channel sends its pre-sealed frames with the ChannelData
// header in front: the frame inside is the same RTP packet, whose fields
// and stamp the send path still writes at the right places.
func TestUseChannelFramesPresealed(t *testing.T) {
	d := &fastDev{}
	s, err := client.NewSender(client.SenderConfig{SSRC: fastSSRC(3, false), PayloadType: payloadType, Key: client.NewMediaKey(), FirstSequence: 1})
	require.NoError(t, err)
	require.NoError(t, d.preseal(s))
	plain := append([]byte(nil), d.tpl[1]...)
	pay, abs := d.payOff[1], d.absOff[1]
	d.useChannel(0x4002)
	ch, inner, ok := parseChannelData(d.tpl[1])
	require.True(t, ok)
	require.Equal(t, uint16(0x4002), ch)
	require.Equal(t, plain, inner)
	require.Equal(t, pay+channelHeader, d.payOff[1])
	require.Equal(t, abs+channelHeader, d.absOff[1])
	putStamp(d.tpl[1][d.payOff[1]:], 12345, 1, 0, 9)
	_, inner, _ = parseChannelData(d.tpl[1])
	off, _, ok := rtpOffsets(inner, 0)
	require.True(t, ok)
	sentNs, cls, _, frame := readStamp(inner[off:])
	require.Equal(t, int64(12345), sentNs)
	require.Equal(t, 1, cls)
	require.Equal(t, uint32(9), frame)

	// A probe's sealed packet is framed the same way.
	d.channelFrame([]byte{0x80, 1, 2, 3})
	ch, inner, ok = parseChannelData(d.cframe)
	require.True(t, ok)
	require.Equal(t, uint16(0x4002), ch)
	require.Equal(t, []byte{0x80, 1, 2, 3}, inner)
}

// turnServer is coturn's turnserver on a loopback port with one long-term
// credential user, UDP only (the port was free for UDP, not known for TCP:
// its TCP listener once found it taken and retried for ever), stopped at
// the test's end. scripts/deps.sh installs it
// (Debian's coturn): a missing one fails the test.
func turnServer(t *testing.T) (addr netip.AddrPort, user, password string) {
	t.Helper()
	bin, err := exec.LookPath("turnserver")
	require.NoError(t, err, "turnserver (Debian's coturn) is needed: run scripts/deps.sh")
	probe, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	addr = probe.LocalAddr().(*net.UDPAddr).AddrPort()
	require.NoError(t, probe.Close())
	dir := t.TempDir()
	user, password = "loadtest", fmt.Sprintf("pw%d", time.Now().UnixNano())
	cmd := exec.Command(bin, "-n", "--no-tcp", "--no-tcp-relay", "--no-tls", "--no-dtls", "--no-cli", "-L", "127.0.0.1", "--relay-ip", "127.0.0.1",
		"-p", fmt.Sprint(addr.Port()), "-a", "-u", user+":"+password, "-r", "callrelay", "--allow-loopback-peers",
		"-m", "1", "--userdb", filepath.Join(dir, "turndb"), "--pidfile", filepath.Join(dir, "pid"),
		"--log-file", "stdout", "--simple-log")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("turnserver:\n%s", out.String())
		}
	})
	// Ready when it answers a STUN binding request.
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer c.Close()
	buf := make([]byte, 1500)
	deadline := time.Now().Add(20 * time.Second)
	for {
		require.True(t, time.Now().Before(deadline), "turnserver did not answer in 20 s")
		m := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
		_, err := c.WriteToUDPAddrPort(m.Raw, addr)
		require.NoError(t, err)
		require.NoError(t, c.SetReadDeadline(time.Now().Add(200*time.Millisecond)))
		if n, _, err := c.ReadFromUDPAddrPort(buf); err == nil && stun.IsMessage(buf[:n]) {
			return addr, user, password
		}
	}
}

// One-to-one calls through coturn: every call's allocation, permission and
// channel are made, frames go both ways as ChannelData and plain UDP,
// every probe frame decrypts byte for byte, nothing is lost.
func TestFastThroughTURN(t *testing.T) {
	skipOffLinux(t)
	addr, user, password := turnServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, key := mustKey(t)
	p := fastPlan(addr, key)
	p.Mix = Mix{OneToOne: 1}
	p.Fast.Target = TargetTURN
	p.Fast.TURN = TURNAuth{User: user, Password: password}
	res, err := Run(ctx, p, io.Discard)
	require.NoError(t, err)
	require.Equal(t, "profile_done", res.Stopped)
	all := res.Totals.All
	require.Greater(t, all.CallsStarted, 5)
	require.Zero(t, all.CallsFailed)
	require.Equal(t, all.Setups.Attempted, all.Setups.Admitted, "refused: %+v", all.Setups.Refused)
	require.Greater(t, all.PacketsSent, uint64(200))
	require.Greater(t, all.PacketsExpected, all.PacketsSent/4)
	require.LessOrEqual(t, all.LossPct, 5.0, "lost %d of %d", all.PacketsLost, all.PacketsExpected)
	require.Zero(t, all.DecryptFailures, "probe frames arrive byte for byte")
	require.Greater(t, all.ProbeDelayMs.Count, uint64(100))
	require.Greater(t, all.BaselineDelayMs.Count, uint64(100))
}

// A wrong password is refused by the server: the setups fail, counted,
// and no frame is sent.
func TestFastTURNWrongPassword(t *testing.T) {
	skipOffLinux(t)
	addr, user, _ := turnServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, key := mustKey(t)
	p := fastPlan(addr, key)
	p.Mix = Mix{OneToOne: 1}
	p.Fast.Target = TargetTURN
	p.Fast.TURN = TURNAuth{User: user, Password: "not-it"}
	p.Bounds.MaxCalls = 4
	res, err := Run(ctx, p, io.Discard)
	require.NoError(t, err)
	all := res.Totals.All
	require.Positive(t, all.Setups.Attempted)
	require.Zero(t, all.Setups.Admitted)
	require.Equal(t, all.Setups.Attempted, all.Setups.Refused.Other)
	require.Zero(t, all.PacketsReceived, "nothing relayed (baseline frames are not counted)")
}
