#!/usr/bin/env bash
# Runs every fuzz test of the module (each func Fuzz* in a *_test.go file),
# one at a time, for FUZZTIME each (default 10s), and prints one line per
# target. Exits non-zero if any target failed.
#
#   shared/testenv/fuzz.sh                      every target, 10 s each
#   FUZZTIME=3m shared/testenv/fuzz.sh          the long run (make fuzz)
#   shared/testenv/fuzz.sh ./gateway/proxy      only the targets of these packages
#
# A failing target saves the input that failed under
# <package>/testdata/fuzz/<FuzzName>/; from then on plain `go test` runs it
# as a seed, and `go test -run '^FuzzName/<file>$' ./<package>` replays it.
set -euo pipefail
cd "$(dirname "$0")/../.."

GO="${GO:-go}"
FUZZTIME="${FUZZTIME:-10s}"
# go test's own limit per target; it must exceed FUZZTIME, or the run ends
# in a timeout instead of a result.
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-30m}"

# Directories of other modules (nested go.mod files) are not this module's.
mapfile -t nested < <(git ls-files --cached --others --exclude-standard '*/go.mod' | xargs -r -n1 dirname)

in_nested_module() {
	local dir=$1 m
	for m in "${nested[@]}"; do
		if [[ $dir == "$m" || $dir == "$m"/* ]]; then
			return 0
		fi
	done
	return 1
}

wanted() {
	local dir=$1 p
	if [[ ${#selected[@]} -eq 0 ]]; then
		return 0
	fi
	for p in "${selected[@]}"; do
		if [[ ./$dir == "${p%/}" || $dir == "${p%/}" ]]; then
			return 0
		fi
	done
	return 1
}

# deadline_race reports whether a failed run's log is only Go's fuzz
# coordinator reporting its own -fuzztime deadline as a failure (a race in
# go1.26's internal/fuzz, golang/go#75804, fixed in go1.27): no input failed,
# none was written, the target just ran out its time. Anything else in the
# log (a failing input, a seed that fails, a build error) is a real failure.
deadline_race() {
	local log=$1
	grep -q '^    context deadline exceeded$' "$log" &&
		! grep -q -e 'Failing input written' -e 'failure while testing seed corpus' -e '^        --- FAIL' "$log"
}

selected=("$@")
targets=() # "dir name"
while IFS= read -r file; do
	dir=$(dirname "$file")
	if in_nested_module "$dir" || ! wanted "$dir"; then
		continue
	fi
	while IFS= read -r name; do
		targets+=("$dir $name")
	done < <(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$file")
done < <(git ls-files --cached --others --exclude-standard '*_test.go' | sort)

if [[ ${#targets[@]} -eq 0 ]]; then
	echo "fuzz: no fuzz targets found" >&2
	exit 1
fi

echo "fuzz: ${#targets[@]} targets, $FUZZTIME each"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
failed=()
start_all=$SECONDS
for t in "${targets[@]}"; do
	dir=${t% *}
	name=${t#* }
	start=$SECONDS
	corpus="$dir/testdata/fuzz/$name"
	before=$(ls "$corpus" 2>/dev/null || true)
	if "$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -timeout "$FUZZ_TIMEOUT" "./$dir" >"$log" 2>&1; then
		printf 'ok    %-28s %-28s %4ds\n' "$dir" "$name" $((SECONDS - start))
	elif deadline_race "$log" && [[ $(ls "$corpus" 2>/dev/null || true) == "$before" ]]; then
		printf 'ok    %-28s %-28s %4ds  (ended by the toolchain'"'"'s fuzztime race, golang/go#75804: no failing input)\n' \
			"$dir" "$name" $((SECONDS - start))
	else
		printf 'FAIL  %-28s %-28s %4ds\n' "$dir" "$name" $((SECONDS - start))
		sed 's/^/      /' "$log" | tail -n 40
		failed+=("$dir $name")
	fi
done

echo "fuzz: ${#targets[@]} targets in $((SECONDS - start_all))s, ${#failed[@]} failed"
if [[ ${#failed[@]} -gt 0 ]]; then
	echo "fuzz: a failing input is saved under <package>/testdata/fuzz/<FuzzName>/ (see the output above);"
	echo "fuzz: fix the code, keep the file as a regression seed, and replay it with plain go test:"
	for t in "${failed[@]}"; do
		echo "fuzz:   $GO test -run '^${t#* }\$' ./${t% *}   # ls ${t% *}/testdata/fuzz/${t#* }/"
	done
	exit 1
fi
