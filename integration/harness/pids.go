package harness

// NodePID returns the process id of node i of a cluster started with
// StartNATSCluster, or 0 when the node is not running or runs in process
// (StartEmbeddedNATSCluster). Tests use it to read a node's CPU time from
// /proc/<pid>/stat, or to name the process they killed.
func (c *NATSCluster) NodePID(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.proc == nil || n.proc.exited() {
		return 0
	}
	return n.proc.pid()
}

// PID returns the process id of the postmaster, or 0 when the server is
// stopped. The server's backends are its children.
func (p *PostgresServer) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil || p.proc.exited() {
		return 0
	}
	return p.proc.pid()
}
