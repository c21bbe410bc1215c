// Package outlier owns outlier detection: passive health checking that
// ejects an upstream's hosts from load balancing when their own traffic
// shows them failing. It only marks hosts; the cluster that owns a Detector
// rebuilds its picker without the ejected ones (Options.OnChange tells it
// when). It knows nothing of connections, pickers or discovery.
//
// The algorithm, the configuration keys and their defaults are Envoy's
// (envoy/config/cluster/v3/outlier_detection.proto and
// source/common/upstream/outlier_detection_impl.cc):
//
//   - Consecutive errors (consecutive_5xx, consecutive_gateway_failure,
//     consecutive_local_origin_failure) eject a host the moment a streak
//     reaches its threshold, subject to the matching enforcing_* percentage.
//   - Every interval, Run compares the hosts' success rates over the
//     interval that just ended: a host is an outlier below
//     mean − success_rate_stdev_factor/1000 × stdev (population standard
//     deviation over the hosts in service with at least
//     success_rate_request_volume requests, when there are at least
//     success_rate_minimum_hosts of them), or when its failure percentage
//     is at least failure_percentage_threshold (failure_percentage_* keys).
//   - An ejection lasts base_ejection_time × multiplier, capped at
//     max_ejection_time, plus up to max_ejection_time_jitter; the
//     multiplier grows by one per ejection and shrinks by one per interval
//     the host stays in service. Hosts return on the interval tick after
//     their time is up, or at once after a successful active health check
//     (Detector.Uneject).
//   - No ejection may take the ejected hosts past max_ejection_percent of
//     the cluster.
//   - With split_external_local_origin_errors, connection failures, resets
//     and timeouts are counted apart from HTTP statuses (their own streak and
//     success rate); without it they count as 503 and 504 (see Result).
//
// Deliberate difference from Envoy: always_eject_one_host defaults to true
// (false in Envoy), so one host may be ejected even when
// max_ejection_percent rounds to zero hosts. With Envoy's default of 10%, a
// cluster of fewer than ten hosts would otherwise never eject anything
// (envoyproxy/envoy#27909, #34796).
//
// The request path (Host.Record, Host.Ejected) is lock-free and allocation-
// free: streaks are atomic counters, and each interval's success-rate
// counts go to a bucket behind an atomic pointer that Run swaps, as grpc-go's
// outlier detection balancer does.
package outlier
