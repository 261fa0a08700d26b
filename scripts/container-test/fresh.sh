# shellcheck shell=bash
# shellcheck disable=SC2016 # the `sh -c` checks expand their own $1, $2 (passed after `_`)
# Checks (e) and (f) of scripts/container-test.sh (sourced by it): fresh containers over empty
# directories bring the files of the first one back, on demand (--no-prefetch) and by
# themselves (the defaults).

# (e) a fresh container over an empty volume, prefetch off, restores on demand
D2=$WORK/vol2
shared_dir "$D2" || die "could not make $D2 a shared mount"
raw_view "$D2"
log "starting container etlfs-ct-2 over an empty directory (--no-prefetch)"
if run_etlfs etlfs-ct-2 "$D2" --no-prefetch; then
    pass "(e) fresh container over an empty directory starts and reports ready"
    check "(e) the file list is complete at once (names from the bucket)" sh -c '
        [ "$(cd "$1" && find . -type f | sort)" = "$(cut -d" " -f3 "$2" | sort)" ]' _ "$D2" "$WORK/tree1"
    check "(e) lazy: nothing downloaded before a read" sh -c '[ -z "$1" ]' _ "$(local_files "$D2")"
    # The read brings its file; the rest of its directory may follow (readahead), the files
    # of other directories do not.
    check "(e) lazy: reading one file fetches it, and nothing of other directories" sh -c '
        [ "$(cat "$1/pre-existing.txt")" = "written before etlfs was first mounted" ] &&
        files=$(cd "$2" && find . -path ./.etlfs -prune -o -type f -print) &&
        printf "%s\n" "$files" | grep -qx "./pre-existing.txt" &&
        ! printf "%s\n" "$files" | grep -q "^\./.*/"' \
        _ "$D2" "$WORK/vol2-raw"
    tree "$D2" >"$WORK/tree2"
    check "(e) file list and contents read back through the host are identical" \
        cmp -s "$WORK/tree1" "$WORK/tree2"
    podman stop -t 60 etlfs-ct-2 >/dev/null 2>&1
    code=$(podman inspect etlfs-ct-2 --format '{{.State.ExitCode}}')
    podman logs etlfs-ct-2 >"$WORK/ct2.log" 2>&1
    check "(e) second container: podman stop exits 0 (got $code) and leaves no mount" \
        sh -c '[ "$1" = 0 ]' _ "$code"
    check "(e) second container: no FUSE mount left at $D2" not_fuse_mounted "$D2"
    tree "$D2" >"$WORK/tree3"
    check "(e) after stop, the restored files are ordinary local files, identical" \
        cmp -s "$WORK/tree1" "$WORK/tree3"
else
    fail "(e) fresh container over an empty directory starts and reports ready"
fi

# (f) at the defaults, a fresh container brings every file back by itself, nothing read
D3=$WORK/vol3
shared_dir "$D3" || die "could not make $D3 a shared mount"
raw_view "$D3"
all_local() { [ "$(local_files "$D3")" = "$(cut -d" " -f3 "$WORK/tree1" | sort)" ]; }
log "starting container etlfs-ct-3 over an empty directory (defaults: prefetch)"
if run_etlfs etlfs-ct-3 "$D3"; then
    pass "(f) fresh container at the defaults starts and reports ready"
    for _ in $(seq 1 120); do
        all_local && break
        sleep 0.5
    done
    check "(f) prefetch: every file is local within 60 s, none read" all_local
    podman stop -t 60 etlfs-ct-3 >/dev/null 2>&1
    code=$(podman inspect etlfs-ct-3 --format '{{.State.ExitCode}}')
    podman logs etlfs-ct-3 >"$WORK/ct3.log" 2>&1
    check "(f) third container: podman stop exits 0 (got $code)" sh -c '[ "$1" = 0 ]' _ "$code"
    tree "$D3" >"$WORK/tree4"
    check "(f) the prefetched files are identical" cmp -s "$WORK/tree1" "$WORK/tree4"
else
    fail "(f) fresh container at the defaults starts and reports ready"
fi
