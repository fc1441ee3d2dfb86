// Package outage holds idemq's outage tests: real dependencies stopped
// and restarted while messages flow, with the default configuration, to
// check that nothing is lost, stranded, dead-lettered or applied twice.
//
// Each test starts the processes it kills (its own redis-server or
// nats-server on a free loopback port, in a temporary directory) and
// never touches the machine's shared services, which it uses only for the
// parts that stay up. Outages last as the outages issue asks (30 s and
// 120 s of Redis, 3 min of the dead-letter stream, a NATS restart under
// the relay); with -short they are a few seconds each. Figures (time to
// resume, pauses logged) are reported with t.Log, never asserted as
// timings.
package outage
