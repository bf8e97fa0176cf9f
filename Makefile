# stackport — see README.md. Every target works on a fresh Debian machine.
SHELL := /bin/bash
GO    ?= go
LAB   ?= $(or $(STACKPORT_LAB),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/stackport-lab)
BIN   := bin/stackport
export STACKPORT_LAB := $(LAB)

.PHONY: all build test lab demo bench soak lint fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/stackport

# lab builds the test servers (versitygw, fake-gcs-server, Azurite, FerretDB;
# Redis and PostgreSQL from Debian) once into $(LAB) and reuses them.
lab:
	internal/lab/install.sh "$(LAB)"

# test runs every test against real servers started on loopback, then a
# short fuzz run of each decoder: a number of executions, not a duration
# (a duration can end while the fuzzer minimizes a new input, and go test
# then fails with "context deadline exceeded" although nothing was found).
test: lab lint
	$(GO) test -count=1 -timeout 12m ./...
	$(MAKE) fuzz FUZZTIME=5000x

FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzVerify$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2s ./snapshot/volume/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeManifest$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2s ./snapshot/
	$(GO) test -run '^$$' -fuzz '^FuzzBSONStream$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2s ./snapshot/mongo/
	$(GO) test -run '^$$' -fuzz '^FuzzFrames$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2s ./snapshot/redis/
	$(GO) test -run '^$$' -fuzz '^FuzzCopyStream$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 2s ./snapshot/postgres/

# demo shows the main jobs on a fresh machine: snapshot a sample volume into a
# repository, list, verify, export and restore it, and compare the trees; then
# migrate a seeded Appsmith stack between lab servers and print the report.
demo: build lab
	GO=$(GO) internal/demo.sh $(BIN)

# bench compares stackport with the stock tools (tar | zstd, redis-cli --rdb,
# pg_dump/pg_restore, mongorestore) on the same data and ends with one
# summary table: operation, data size, throughput, throughput ÷ the stock
# tool's, peak RSS. BENCH_SIZE_MIB sets the volume tree size (default 1024
# and 4096). mongorestore is built here only, from the Go module
# github.com/mongodb/mongo-tools at release MONGO_TOOLS (default 100.10.0),
# into $(LAB)/bin; when it cannot be, the mongo benchmarks say so and
# compare with a model of mongorestore instead.
bench: build lab
	@command -v pgcopydb >/dev/null || { $$( [ "$$(id -u)" = 0 ] || echo sudo -n ) env DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq pgcopydb >/dev/null 2>&1 || echo "pgcopydb could not be installed: BenchmarkPostgres skips its comparison"; }
	@v=$${MONGO_TOOLS:-100.10.0}; [ -x "$(LAB)/bin/mongorestore" ] && [ -f "$(LAB)/bin/.mongorestore.$$v" ] || { \
	  tmp=$$(mktemp -d); log="$$tmp/log"; \
	  if ( cd "$$tmp" && \
	    { $(GO) mod download -json "github.com/mongodb/mongo-tools@$$v" >dl.json || { grep '"Error"' dl.json; false; }; } && \
	    dir=$$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p' dl.json) && cp -r "$$dir" src && chmod -R u+w src && \
	    cd src && GOFLAGS=-mod=mod $(GO) build -o "$(LAB)/bin/mongorestore" ./mongorestore/main ) >"$$log" 2>&1; \
	  then touch "$(LAB)/bin/.mongorestore.$$v"; \
	  else echo "mongorestore could not be built from github.com/mongodb/mongo-tools@$$v: $$(tail -1 "$$log")"; \
	    echo "  BenchmarkMongo* compare stackport's restore with a model of mongorestore instead, marked (model) in the table"; fi; \
	  rm -rf "$$tmp"; }
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./cmd/stackport/

# soak takes 50 snapshots of all four components under write load, with
# prune between them, checks that memory and file descriptors stay flat, and
# ends with the same summary table as bench (per operation).
soak: lab
	STACKPORT_SOAK=1 $(GO) test -count=1 -run '^TestSoak$$' -v -timeout 30m ./cmd/stackport/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
