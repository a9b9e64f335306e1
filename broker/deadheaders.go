package broker

import (
	"maps"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
)

// A dead letter keeps the headers the publisher set on its request, each
// under HeaderOrigPrefix: prefixed, the publisher's Nats-Msg-Id does not
// dedupe the dead letter, and no header of the publisher's can pass for one
// of Understudy's. OriginalHeaders gives them back for a redrive.
const (
	// HeaderOrigPrefix prefixes each of the publisher's headers on a dead
	// letter: Understudy-Orig-Nats-Msg-Id, Understudy-Orig-Traceparent, ...
	HeaderOrigPrefix = "Understudy-Orig-"
	// HeaderDroppedHeaders names, comma separated, the publisher's headers a
	// dead letter could not keep within maxOrigHeaders.
	HeaderDroppedHeaders = "Understudy-Dropped-Headers"
)

// maxOrigHeaders bounds the publisher's headers a dead letter keeps, counted
// as encoded (prefixed name, value, separators); maxDropped bounds the list
// of those dropped.
const (
	maxOrigHeaders = 4096
	maxDropped     = 512
)

// keepOrigHeaders copies src's headers into dst under HeaderOrigPrefix, in
// name order, each with all its values or not at all: one that would take
// the total over maxOrigHeaders is dropped whole (a cut value would not be
// what was sent) and named in HeaderDroppedHeaders.
func keepOrigHeaders(dst, src nats.Header) {
	size := 0
	var dropped []string
	for _, k := range slices.Sorted(maps.Keys(src)) {
		n := 0
		for _, v := range src[k] {
			n += len(HeaderOrigPrefix) + len(k) + len(": \r\n") + len(v)
		}
		if size+n > maxOrigHeaders {
			dropped = append(dropped, k)
			continue
		}
		size += n
		dst[HeaderOrigPrefix+k] = slices.Clone(src[k])
	}
	if len(dropped) > 0 {
		dst.Set(HeaderDroppedHeaders, cut(strings.Join(dropped, ", "), maxDropped))
	}
}

// OriginalHeaders returns the publisher's headers a dead letter kept (see
// HeaderOrigPrefix), unprefixed: what to republish the dead letter's bytes
// with. nil when there are none.
func OriginalHeaders(dead nats.Header) nats.Header {
	var out nats.Header
	for k, v := range dead {
		name, ok := strings.CutPrefix(k, HeaderOrigPrefix)
		if !ok || name == "" {
			continue
		}
		if out == nil {
			out = nats.Header{}
		}
		out[name] = slices.Clone(v)
	}
	return out
}
