// Package installer holds the tests of deploy/install.sh. Each test builds a
// fake machine: a directory of stub programs (uname, docker, kubectl, helm,
// curl, ...) that answer with canned output and log how they were called,
// and an INSTALL_ROOT with the /proc and /etc files the script reads. The
// script runs with PATH set to those stubs plus a few real tools (bash and
// coreutils), so it can neither download nor change anything real. See
// README.md in this directory.
package installer
