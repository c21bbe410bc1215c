package xds

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// deltaSub against go-control-plane's own subscription
// (stream.Subscription) and snapshot cache: random first requests (legacy
// wildcard, "*", names, initial_resource_versions of current, stale and
// gone resources), subscribe and unsubscribe (with and without "*", while
// wildcard), and snapshots (several before a response: the materialize
// path). After every step both must answer the same resources and
// removals, and a push the stream's needs check skipped must have had
// nothing to send. Fixed seeds. Two differences of go-control-plane's are
// modelled where they show (see compare): versions it keeps when it sends
// nothing, and an unanswered wildcard request without nonce.
func TestDeltaSubMatchesGoControlPlane(t *testing.T) {
	names := []string{"a", "b", "c", "d"}
	pick := func(r *rand.Rand, star bool) []string {
		var out []string
		for _, n := range names {
			if r.IntN(3) == 0 {
				out = append(out, n)
			}
		}
		if star && r.IntN(4) == 0 {
			out = append(out, "*")
		}
		return out
	}
	for seed := range uint64(1000) {
		r := rand.New(rand.NewPCG(seed, 1))
		var log []string
		gcp := cache.NewSnapshotCache(false, cache.IDHash{}, nil)
		var cur *deltaSnapshot
		var gsub stream.Subscription
		var sub *deltaSub
		sets := &nameSets{}
		respondPending := false
		kicked := false // a flush is due since the last evaluation
		snapVer := 0
		// what each implementation's client has (name: version)
		gotView, wantView := map[string]string{}, map[string]string{}
		setSnap := func() {
			items := map[string]types.Resource{}
			for _, n := range names {
				if r.IntN(3) > 0 {
					items[n] = &endpointv3.ClusterLoadAssignment{ClusterName: n, Endpoints: []*endpointv3.LocalityLbEndpoints{{LoadBalancingWeight: wrapperspb.UInt32(uint32(r.IntN(2)))}}}
				}
			}
			snapVer++
			v := fmt.Sprint(snapVer)
			ds, err := newDeltaSnapshot(resource.EndpointType, v, items, cur)
			if err != nil {
				t.Fatal(err)
			}
			cur = ds
			// The push's check (needs may move the subscription to ds
			// without a response): what it says is not needed must not
			// be.
			if sub != nil {
				st := &deltaStream{subs: []*deltaSub{sub}}
				if st.needs(resource.EndpointType, ds) {
					kicked = true
				}
			}
			list := make([]types.Resource, 0, len(items))
			for _, it := range items {
				list = append(list, it)
			}
			snap, err := cache.NewSnapshot(v, map[string][]types.Resource{resource.EndpointType: list})
			if err != nil {
				t.Fatal(err)
			}
			if err := gcp.SetSnapshot(context.Background(), "n", snap); err != nil {
				t.Fatal(err)
			}
			log = append(log, fmt.Sprintf("snapshot %v", slices.Sorted(func(y func(string) bool) {
				for n, it := range items {
					if !y(n + fmt.Sprint(it.(*endpointv3.ClusterLoadAssignment).Endpoints[0].LoadBalancingWeight.GetValue())) {
						return
					}
				}
			})))
		}
		// compare evaluates both and checks they agree.
		compare := func() {
			if sub == nil {
				return
			}
			got := sub.evaluate(cur)
			if !kicked && got != nil {
				t.Fatalf("seed %d: after\n  %s\nno push needed, but the evaluation answers %v", seed, fmt.Sprint(log), got)
			}
			kicked = false
			// An unanswered wildcard request without nonce stays to be
			// answered (even empty) by the next evaluation with a
			// snapshot; go-control-plane looks at the latest request
			// only. The difference shows only for a client sending a
			// nonce of a type it never got a response of.
			nonce := "1"
			if respondPending {
				nonce = ""
			}
			if cur != nil {
				respondPending = false
			}
			ch := make(chan cache.DeltaResponse, 1)
			req := &cache.DeltaRequest{Node: &corev3.Node{Id: "n"}, TypeUrl: resource.EndpointType, ResponseNonce: nonce}
			cancel, err := gcp.CreateDeltaWatch(req, gsub, ch)
			if err != nil {
				t.Fatal(err)
			}
			var wantRes, wantRem []string
			var want bool
			select {
			case resp := <-ch:
				want = true
				raw := resp.(*cache.RawDeltaResponse)
				pb, err := raw.GetDeltaDiscoveryResponse()
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range pb.GetResources() {
					wantRes = append(wantRes, x.GetName())
				}
				wantRem = pb.GetRemovedResources()
				for _, x := range pb.GetResources() {
					wantView[x.GetName()] = x.GetVersion()
				}
				for _, n := range wantRem {
					delete(wantView, n)
				}
				gsub.SetReturnedResources(resp.GetNextVersionMap())
			default:
				if cancel != nil {
					cancel()
				}
				// Without a response go-control-plane keeps the versions
				// of names no longer of interest (after "*" is
				// unsubscribed), where a response would have dropped
				// them; later it may name one as removed when it is
				// subscribed again. deltaSub forgets them in both cases
				// (the client was told nothing). Model the response case.
				if cur != nil && !gsub.IsWildcard() {
					rr := gsub.ReturnedResources()
					for n := range rr {
						if _, ok := gsub.SubscribedResources()[n]; !ok {
							delete(rr, n)
						}
					}
				}
			}
			var gotRes, gotRem []string
			if got != nil {
				for _, x := range got.GetResources() {
					gotRes = append(gotRes, x.GetName())
				}
				gotRem = got.GetRemovedResources()
				for _, x := range got.GetResources() {
					gotView[x.GetName()] = x.GetVersion()
				}
				for _, n := range gotRem {
					delete(gotView, n)
				}
			}
			// go-control-plane keeps returned versions when it sends
			// nothing, and may later name as removed a resource the
			// client does not have: no change for the client. Compare
			// what the clients have of what they are subscribed to.
			same := gsub.IsWildcard() == sub.wildcard
			for _, n := range names {
				_, gi := gsub.SubscribedResources()[n]
				if gi != sub.names.has(n) {
					same = false
				}
				if (gi || gsub.IsWildcard()) && gotView[n] != wantView[n] {
					same = false
				}
			}
			respondOnly := len(wantRes) == 0 && len(wantRem) == 0 && want
			if respondOnly && got == nil {
				same = false
			}
			slices.Sort(wantRes)
			slices.Sort(wantRem)
			slices.Sort(gotRes)
			slices.Sort(gotRem)
			if !same || (got != nil) != want || !slices.Equal(gotRes, wantRes) || !slices.Equal(gotRem, wantRem) {
				t.Fatalf("seed %d: after\n  %s\nresponse %v resources %v removed %v (client has %v); go-control-plane %v %v %v (%v)",
					seed, fmt.Sprint(log), got != nil, gotRes, gotRem, gotView, want, wantRes, wantRem, wantView)
			}
		}
		if r.IntN(4) > 0 {
			setSnap()
		}
		for range 20 {
			switch r.IntN(3) {
			case 0:
				setSnap()
				if r.IntN(2) == 0 {
					continue // several snapshots before the next response
				}
			default:
				subscribe, unsubscribe := pick(r, true), pick(r, true)
				nonce := ""
				if sub != nil && r.IntN(2) == 0 {
					nonce = "1"
				}
				if sub == nil {
					init := map[string]string{}
					if r.IntN(2) == 0 {
						for _, n := range pick(r, false) {
							init[n] = []string{"x", ""}[r.IntN(2)]
							if x, ok := cur.get(n); ok && r.IntN(2) == 0 {
								init[n] = x.version
							}
						}
					}
					initCopy := map[string]string{}
					for k, v := range init {
						initCopy[k] = v
					}
					gsub = stream.NewDeltaSubscription(subscribe, unsubscribe, initCopy, true)
					sub = &deltaSub{typeURL: resource.EndpointType, own: map[string]string{}}
					sub.legacy = len(subscribe) == 0
					sub.wildcard = sub.legacy
					for n, v := range init {
						sub.own[n] = v
					}
					sub.update(sets, subscribe, unsubscribe)
					log = append(log, fmt.Sprintf("first request sub %v unsub %v init %v", subscribe, unsubscribe, init))
				} else {
					gsub.UpdateResourceSubscriptions(subscribe, unsubscribe)
					sub.update(sets, subscribe, unsubscribe)
					log = append(log, fmt.Sprintf("request sub %v unsub %v nonce %q", subscribe, unsubscribe, nonce))
				}
				kicked = true // a request is answered by the handler
				if sub.wildcard && nonce == "" {
					sub.respond = true
					respondPending = true
				}
			}
			compare()
		}
	}
}
