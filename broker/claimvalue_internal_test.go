package broker

import (
	"encoding/json"
	"testing"
	"time"
)

// The claim's hand-written encoding stores the same bytes json.Marshal did.
func TestClaimValueEncodingIsJSONMarshals(t *testing.T) {
	at := time.Date(2026, 11, 30, 14, 37, 52, 123456789, time.UTC)
	local := time.Now() // monotonic reading, local zone
	for _, v := range []claimValue{
		{Seq: 1, Worker: "host-42", At: at, StaleMS: 90000},
		{Done: true, Seq: 1 << 63, Worker: "w", At: at},
		{Requeued: true, Seq: 7, Worker: "host-1", At: local, StaleMS: -1},
		{Released: true, Worker: "", At: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", -5*3600))},
		{Seq: 3, Worker: `a"b\c`, At: at},
		{Seq: 3, Worker: "<w>&", At: at},
		{Seq: 3, Worker: "wörker\u2028\n", At: at},
		{Seq: 3, Worker: "w", At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Seq: 3, Worker: "w", At: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Seq: 3, Worker: "w"},
	} {
		want, wantErr := json.Marshal(v)
		b := &Broker{clock: func() time.Time { return v.At }}
		got := b.claimValue(v)
		if wantErr != nil {
			// Out of json's range: the broker stores what it always did.
			if len(got) != 0 {
				t.Errorf("%+v: got %s, json.Marshal failed (%v)", v, got, wantErr)
			}
			continue
		}
		if string(got) != string(want) {
			t.Errorf("%+v:\n got %s\nwant %s", v, got, want)
		}
	}
}
