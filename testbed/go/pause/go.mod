// The test bed's pause program for the kind node image (registry.k8s.io/pause tags): the
// sandbox container of every Pod. Sleeps until SIGINT/SIGTERM and reaps zombies.
module shopstream.dev/testbed/pause

go 1.26.0
