package protocol

import "testing"

// The subjects as README.md 7.5 and 7.6 write them.
func TestSubjects(t *testing.T) {
	id, err := ParseID("0123456789abcdef0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		MetadataSubject("callrelay", 0):  "callrelay.meta.0",
		MetadataSubject("callrelay", 63): "callrelay.meta.63",
		CallSubject("callrelay", id):     "callrelay.call.0123456789abcdef0123456789abcdef",
		ForwardersSubject("x.y"):         "x.y.forwarders",
	} {
		if got != want {
			t.Errorf("subject %q, want %q", got, want)
		}
	}
}
