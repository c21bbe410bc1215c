# Multi-stage build: a static, non-root sidemesh image.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/sidemesh/sidemesh/sidecar.Version=${VERSION}" \
    -o /out/sidemesh ./cmd/sidemesh

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sidemesh /usr/local/bin/sidemesh
# 1337 is the uid the iptables rules exempt (sidemesh iptables --proxy-uid).
USER 1337:1337
EXPOSE 15000 15001 15006
ENTRYPOINT ["/usr/local/bin/sidemesh"]
CMD ["run", "-c", "/etc/sidemesh/sidemesh.yaml"]
