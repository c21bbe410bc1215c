// Package testenv starts the real programs that tests run against (a Consul
// agent today) and holds the few helpers they share: the module root, free
// loopback ports, polling with a deadline and a child process whose log is
// printed when the test fails.
//
// The programs are built by `make tools` into bin/tools/ from the pinned
// tools modules (tools/consul, ...). When a binary, a privilege or a kernel
// feature a test needs is missing, RequireOrSkip skips the test with a
// message that says what is missing, unless SIDEMESH_REQUIRE_TOOLS is set
// (`make test`, CI), which turns the skip into a failure.
//
// Everything here is for tests only: it takes a testing.TB and reports
// problems through it. A Process, and so a Consul, may be used from several
// goroutines; its Stop and Restart are serialised.
package testenv
