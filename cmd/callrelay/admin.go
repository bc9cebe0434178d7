package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

var adminProc = process[adminOptions]{name: "admin", flags: adminFlags,
	about: "act on live calls through the dashboard's admin API: callrelay admin <calls|call|remove|hold|release|move|drain|pin|unpin|capture> [flags]"}

// adminOptions is what `callrelay admin` takes.
type adminOptions struct {
	url, token               string
	timeout                  time.Duration
	forwarder, region, class string
	call, participant, media string
	to, level, out           string
	seconds, banSeconds      int
}

func adminFlags(fs *flag.FlagSet) *adminOptions {
	o := &adminOptions{url: "http://127.0.0.1:8080", timeout: 10 * time.Second}
	fs.StringVar(&o.url, "url", o.url, "the dashboard's address (its --listen), served with --admin-api")
	fs.StringVar(&o.token, "token", "", "the dashboard's admin token; prefer the variable to the command line")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "how long to wait for an answer (a capture: its seconds more)")
	fs.StringVar(&o.forwarder, "forwarder", "", "calls: only this forwarder's; drain, pin, unpin: the forwarder; capture: the forwarder (default: one serving the call)")
	fs.StringVar(&o.region, "region", "", "calls: only forwarders of this region")
	fs.StringVar(&o.class, "class", "", "calls: only group or one_to_one calls")
	fs.StringVar(&o.call, "call", "", "the call id (32 hex digits)")
	fs.StringVar(&o.participant, "participant", "", "the participant id (32 hex digits); move: empty moves the whole call")
	fs.StringVar(&o.media, "media", "audio", "hold, release: audio or video")
	fs.StringVar(&o.to, "to", "", "move: the forwarder id to move to")
	fs.StringVar(&o.level, "level", "", "pin: the throttle level: new_group, new_one_to_one, group_join, second_party (or none)")
	fs.IntVar(&o.seconds, "seconds", 10, "capture: how long, 1..60")
	fs.StringVar(&o.out, "out", "", "capture: the pcapng file to write (default call-<id>.pcapng)")
	fs.IntVar(&o.banSeconds, "ban-seconds", 600, "remove: how long its rejoin is refused")
	return o
}

// runAdmin: `callrelay admin <action> [flags]`.
func runAdmin(ctx context.Context, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			_, _, err := adminProc.parse(args, os.Stdout)
			return err
		}
		return errors.New("admin: want an action: calls | call | remove | hold | release | move | drain | pin | unpin | capture (callrelay admin -h)")
	}
	action := args[0]
	o, done, err := adminProc.parse(args[1:], os.Stdout)
	if err != nil || done {
		return err
	}
	if o.token == "" {
		return errors.New("admin: no token: set CALLRELAY_ADMIN_TOKEN (or --token) to the dashboard's admin token")
	}
	body := map[string]any{}
	set := func(k string, v any) { body[k] = v }
	var method, path string
	method, path = http.MethodPost, "/api/admin/"+action
	switch action {
	case "calls":
		q := url.Values{}
		for k, v := range map[string]string{"forwarder": o.forwarder, "region": o.region, "class": o.class} {
			if v != "" {
				q.Set(k, v)
			}
		}
		method, path = http.MethodGet, "/api/admin/calls?"+q.Encode()
	case "call":
		method, path = http.MethodGet, "/api/admin/call?id="+url.QueryEscape(o.call)
	case "remove":
		set("call", o.call)
		set("participant", o.participant)
		set("ban_seconds", o.banSeconds)
	case "hold", "release":
		set("call", o.call)
		set("participant", o.participant)
		set("media", o.media)
		set("hold", action == "hold")
		path = "/api/admin/hold"
	case "move":
		set("call", o.call)
		set("participant", o.participant)
		set("to", o.to)
	case "drain":
		set("forwarder", o.forwarder)
	case "pin", "unpin":
		set("forwarder", o.forwarder)
		if action == "pin" {
			set("level", o.level)
		}
		path = "/api/admin/pin"
	case "capture":
		set("call", o.call)
		set("seconds", o.seconds)
		set("forwarder", o.forwarder)
		o.timeout += time.Duration(o.seconds) * time.Second
	default:
		return fmt.Errorf("admin: unknown action %q: want calls | call | remove | hold | release | move | drain | pin | unpin | capture", action)
	}
	return adminRequestDo(ctx, o, method, path, body, action)
}

// adminRequestDo sends one request and prints the answer (JSON, indented),
// or writes a capture's pcapng to its file.
func adminRequestDo(ctx context.Context, o *adminOptions, method, path string, body map[string]any, action string) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	var rd io.Reader
	if method == http.MethodPost {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(o.url, "/")+path, rd)
	if err != nil {
		return fmt.Errorf("admin: --url %q: %w", o.url, err)
	}
	req.Header.Set("Authorization", "Bearer "+o.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("admin: reading the answer: %w", err)
	}
	if action == "capture" && resp.StatusCode == http.StatusOK {
		out := o.out
		if out == "" {
			out = "call-" + o.call + ".pcapng"
		}
		if err := os.WriteFile(out, data, 0o600); err != nil {
			return fmt.Errorf("admin: %w", err)
		}
		fmt.Printf("wrote %s (%d bytes): open it with tshark -r %s\n", out, len(data), out)
		return nil
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, data, "", "  ") == nil {
		data = pretty.Bytes()
	}
	fmt.Println(strings.TrimSpace(string(data)))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin: %s", resp.Status)
	}
	return nil
}
