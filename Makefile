SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
GO ?= go
BIN := bin/regent

.PHONY: help build run test test-short proto check-generate bench scale soak fuzz fmt vet lint clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build bin/regent (static)
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/regent

run: build ## start one Regent node with data in ./regent-data
	$(BIN) server --data-dir ./regent-data --health-check-networks 127.0.0.0/8

test: ## every test, race detector on; the Raft tests once more on the raft-wal log store
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -race -count=1 -timeout 10m ./persistent/ -raft.logstore=wal

.PHONY: test-compare
test-compare: ## the etcd and ZooKeeper sides of bench-compare against real clusters (needs Debian's etcd-server and zookeeperd; .ci/run installs them)
	$(GO) vet -tags compare ./internal/bench/compare/
	$(GO) test -tags compare -race -count=1 -timeout 10m -run 'TestEtcdWorkloads|TestZooKeeperWorkloads' ./internal/bench/compare/

test-short: ## quick tests without the race detector
	$(GO) test -short -count=1 ./...

proto: ## regenerate Go code from proto/ (protoc from Debian's protobuf-compiler; plugins pinned in go.mod)
	PATH="$$(pwd)/.bin:$$PATH"; mkdir -p .bin; \
	$(GO) build -o .bin/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go; \
	$(GO) build -o .bin/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc; \
	$(GO) build -o .bin/protoc-gen-go-vtproto github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto; \
	protoc -I proto --go_out=paths=source_relative:proto --go-grpc_out=paths=source_relative:proto \
	  --go-vtproto_out=paths=source_relative:proto --go-vtproto_opt=features=marshal+unmarshal+size $$(find proto -name '*.proto')

check-generate: proto ## fail when generated code is stale
	git diff --exit-code -- proto

bench: build ## figures for BENCHMARKS.md: regent bench (beside the no-op ceiling) and memory per instance
	$(BIN) bench --clients 1,16,64 --duration 4s
	$(GO) test -run '^$$' -bench MemoryPerInstance -benchtime 1x ./ephemeral/

.PHONY: bench-cluster
bench-cluster: ## cluster figures for BENCHMARKS.md: convergence, removal, verify cost, owner killed (3 in-process nodes, ~1.5 min)
	$(GO) test -run '^$$' -bench '^BenchmarkCluster' -benchtime 1x -timeout 10m ./internal/bench/

.PHONY: bench-raft
bench-raft: ## persistent figures for BENCHMARKS.md: register beside bare raft, failover, restart with 1M instances (~2 min)
	$(GO) test -run '^$$' -bench '^BenchmarkRaft' -benchtime 1x -timeout 30m ./persistent/ -raftbench.rounds=6 -raftbench.duration=2s

.PHONY: bench-compare
bench-compare: build ## Regent beside a 3-member etcd cluster and a 3-server ZooKeeper ensemble, same machine, same run (apt-get installs Debian's etcd-server and zookeeperd if missing; ZOOKEEPER=0 leaves ZooKeeper out; REGENT_ARGS=--raft-log-store=wal runs Regent on raft-wal; ~6 min)
	command -v etcd >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client; }
	[ "$${ZOOKEEPER:-1}" = 0 ] || [ -f /usr/share/java/zookeeper.jar ] || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y zookeeperd; }
	$(GO) build -o bin/regent-compare ./cmd/regent-compare
	bin/regent-compare -regent $(BIN) -etcd "$$(command -v etcd)" $$([ "$${ZOOKEEPER:-1}" = 0 ] || echo -zookeeper /usr/share/java/zookeeper.jar) -clients $${CLIENTS:-1,16,64} -rounds $${ROUNDS:-2} -duration $${DURATION:-2s} -regent-args "$${REGENT_ARGS:-}"

.PHONY: scale
scale: ## Distro scale model: the real engine at 3-65 nodes and 10k-1M clients on a virtual clock beside Nacos' scheme; tables and plots in docs/scale (~6 min, ~8 GB)
	$(GO) run ./cmd/regent-scale

soak: ## long random fault schedules on real processes (RUNS, NODES, FAULTS, SERVER_ARGS); prints the seed of any failure
	$(GO) run ./chaos/cmd/regent-chaos -runs $${RUNS:-10} -nodes $${NODES:-5} -faults $${FAULTS:-10} -server-args "$${SERVER_ARGS:-}"

fuzz: ## run every fuzz target for FUZZTIME each (default 30s)
	for pkg_target in ./persistent/:FuzzDecodeCommand ./membership/:FuzzDecodeMeta ./rpc/:FuzzDecodePeerSync ./rpc/:FuzzDecodePeerVerify ./rpc/:FuzzPeerReplies ./rpc/:FuzzPeerRequests ./rpc/:FuzzSessionMessages ./rpc/:FuzzParseLimitRules ./rpc/:FuzzUnaryRequests; do \
	  $(GO) test -run '^$$' -fuzz "^$${pkg_target#*:}$$" -fuzztime $${FUZZTIME:-30s} "$${pkg_target%%:*}"; \
	done

fmt: ## gofmt everything
	gofmt -w $$(git ls-files '*.go')

vet: ## go vet
	$(GO) vet ./...

clean: ## remove build output and local data
	rm -rf bin .bin regent-data
