// Package compose holds the docker compose stack's configuration files
// (Prometheus, Grafana) and the tests of docker-compose.yml. The tests load
// the compose file the way docker compose does (compose-go, with
// .env.example) and check it against the binaries' own configuration
// loaders, so a variable a binary requires cannot go missing from the stack.
// See README.md in this directory.
package compose
