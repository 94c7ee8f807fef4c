// Package images holds the container images' Dockerfile and its tests. The
// tests read deploy/images/Dockerfile, run its go build command for amd64 and
// arm64 from a copy of the build context that .dockerignore leaves, check
// that the binaries are static, and run them as uid 65532 in an otherwise
// empty root, as in the distroless image. See README.md in this directory.
package images
