package protocol

// The JSON an admin command carries (AdminCommand.Args) and the JSON of its
// reply (AdminReply.Body, except a capture's, which is pcapng). The admin
// API (dashboard) writes the one and reads the other; the forwarder the
// reverse. README.md section 8 lists which op takes what.

// AdminArgs are every op's arguments; each op reads the fields it needs.
type AdminArgs struct {
	Call        string `json:"call,omitempty"`        // 32 hex digits
	Participant string `json:"participant,omitempty"` // 32 hex digits; empty: the whole call (move)
	Media       string `json:"media,omitempty"`       // hold: "audio" or "video"
	Hold        bool   `json:"hold,omitempty"`        // hold: true holds, false releases
	To          string `json:"to,omitempty"`          // move: the forwarder id to move to
	Level       string `json:"level,omitempty"`       // pin: a throttle level name; empty releases
	Seconds     int    `json:"seconds,omitempty"`     // capture: how long, 1..AdminMaxCaptureSeconds
	Ban         int    `json:"ban_seconds,omitempty"` // remove: how long its rejoin is refused (default 600)
}

// AdminMaxCaptureSeconds bounds one capture.
const AdminMaxCaptureSeconds = 60

// AdminCallSummary is one call in a forwarder's list.
type AdminCallSummary struct {
	Call      string `json:"call"`
	Class     string `json:"class"` // "one_to_one" or "group"
	Members   int    `json:"members"`
	Remote    int    `json:"remote_members"`
	Speaker   string `json:"speaker,omitempty"`
	Forwarder string `json:"forwarder"`
}

// AdminCalls answers AdminOpCalls.
type AdminCalls struct {
	Forwarder string             `json:"forwarder"`
	Level     string             `json:"throttle_level"`
	Pinned    bool               `json:"pinned"`
	Draining  bool               `json:"draining"`
	Calls     []AdminCallSummary `json:"calls"`
}

// AdminMember is one local member of a call and its legs.
type AdminMember struct {
	Participant string   `json:"participant"`
	Addr        string   `json:"addr"`
	SSRCs       []uint32 `json:"ssrcs"`
	HeldAudio   bool     `json:"held_audio"`
	HeldVideo   bool     `json:"held_video"`
	Forwarded   bool     `json:"audio_forwarded"` // in the decision's forwarding set (or no decision)
	UplinkBps   uint64   `json:"uplink_estimate_bps"`
	DownlinkBps uint64   `json:"downlink_estimate_bps"`
	// Layers: the video layer this member receives from each sender
	// (sender participant id -> "low", "high", "single" or "none").
	Layers     map[string]string `json:"layers,omitempty"`
	MovingTo   string            `json:"moving_to,omitempty"`
	IdleMillis int64             `json:"idle_ms"`
}

// AdminEvent is one entry of a call's timeline.
type AdminEvent struct {
	AtUnixMs  int64  `json:"at_unix_ms"`
	Forwarder string `json:"forwarder"` // "" for a conductor's event
	// Conductor names the conductor of a decision event (speaker, layer,
	// layer_cut from its report, README.md 7.8); "" for a forwarder's.
	Conductor   string `json:"conductor,omitempty"`
	Kind        string `json:"kind"` // join, leave, move, migrate, speaker, layer, layer_cut, nack_burst, refused, hold, removed
	Participant string `json:"participant,omitempty"`
	Detail      string `json:"detail,omitempty"`
}

// AdminCall answers AdminOpCall: one forwarder's view of the call.
type AdminCall struct {
	Call      string        `json:"call"`
	Forwarder string        `json:"forwarder"`
	Class     string        `json:"class"`
	Speaker   string        `json:"speaker,omitempty"`
	Epoch     uint64        `json:"decision_epoch"`
	Members   []AdminMember `json:"members"`
	Remote    []string      `json:"remote_members"` // participant@forwarder
	Events    []AdminEvent  `json:"events"`
}

// AdminResult answers the actions: what was done.
type AdminResult struct {
	Forwarder string `json:"forwarder"`
	Done      string `json:"done"`
}

// AdminError is the body of a reply whose status is not 200.
type AdminError struct {
	Error string `json:"error"`
}
