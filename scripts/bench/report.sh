# shellcheck shell=bash
# Measuring and reporting of scripts/bench.sh (sourced by it): rows and samples, medians and
# ratios, and the Markdown tables every section prints.


# define_row ID LABEL KIND TARGET [MIB]
#   KIND: "tput" (reported in MiB/s, MIB = data size; higher is better), "time" (reported in ms;
#   lower is better) or "secs" (reported in s; lower is better). TARGET: ">=0.95", "<=3" or
#   "<1", compared with the ratio etlfs/baseline, or "-" for none. ROW_MAX[ID]=S adds a limit
#   in seconds on the etlfs median itself.
define_row() {
    ROWS+=("$1")
    ROW_LABEL[$1]=$2
    ROW_KIND[$1]=$3
    ROW_TARGET[$1]=$4
    ROW_MIB[$1]=${5:-0}
}

# measure ROW MODE REP -- fsbench args...   Runs fsbench once; keeps the sample when REP >= 1.
measure() {
    local row=$1 m=$2 rep=$3 t
    shift 4
    t=$("$FSBENCH" "$@")
    record "$row" "$m" "$rep" "$t"
}

# record ROW MODE REP SECONDS: keeps a sample when REP >= 1.
record() {
    if (($3 >= 1)); then
        SAMPLES["$1|$2"]+="$4 "
        printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SAMPLES_FILE"
    fi
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

median() {
    tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) exit 1; if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# value ROW SECONDS -> the displayed number (MiB/s, ms or s)
value() {
    case ${ROW_KIND[$1]} in
    tput) awk -v s="$2" -v mib="${ROW_MIB[$1]}" 'BEGIN { printf "%.0f", mib / s }' ;;
    secs) awk -v s="$2" 'BEGIN { printf "%.2f", s }' ;;
    mib) awk -v s="$2" 'BEGIN { printf "%.1f", s }' ;;
    *) awk -v s="$2" 'BEGIN { printf "%.1f", s * 1000 }' ;;
    esac
}

# ratio ROW NATIVE_SECONDS ETLFS_SECONDS -> etlfs/native (throughput or time, by the row kind)
ratio() {
    if [[ ${ROW_KIND[$1]} == tput ]]; then
        awk -v n="$2" -v e="$3" 'BEGIN { printf "%.2f", n / e }'
    else
        awk -v n="$2" -v e="$3" 'BEGIN { printf "%.2f", e / n }'
    fi
}

verdict() { # verdict RATIO TARGET -> PASS or MISS   (TARGET: >=X, <=X, >X or <X)
    awk -v r="$1" -v t="$2" 'BEGIN { match(t, /^[<>]=?/); op = substr(t, 1, RLENGTH)
        v = substr(t, RLENGTH + 1) + 0
        ok = (op == ">=") ? (r >= v) : (op == "<=") ? (r <= v) : (op == ">") ? (r > v) : (r < v)
        print ok ? "PASS" : "MISS" }'
}

# Pads tab-separated lines (the first is the header) into an aligned Markdown table.
format_table() {
    awk -F'\t' '
        { n = NR; cols = (NF > cols) ? NF : cols
          for (i = 1; i <= NF; i++) { c[NR, i] = $i; l = length($i); if (l > w[i]) w[i] = l } }
        END {
            for (r = 1; r <= n; r++) {
                line = "|"
                for (i = 1; i <= cols; i++)
                    line = line sprintf((i == 1 ? " %-*s |" : " %*s |"), w[i], c[r, i])
                print line
                if (r == 1) {
                    line = "|"
                    for (i = 1; i <= cols; i++) {
                        d = ""; for (k = 0; k < w[i]; k++) d = d "-"
                        line = line (i == 1 ? " " d " |" : " " d ":|")
                    }
                    print line
                }
            }
        }'
}

# print_table TITLE BASELINE MODE...: one line per defined row; the verdict is for the first MODE.
# With TABLE_REF set to another mode (e.g. native), that mode's figure and the first MODE's
# ratio to it are shown too (not judged).
print_table() {
    local title=$1 base=$2 row m med bmed r verdict line target units ref=${TABLE_REF:-}
    shift 2
    if [[ $base == native ]]; then units="MiB/s or ms; ratio = etlfs/native"; else units="s; ratio = etlfs/$base, lower is better"; fi
    printf '\n%s (median of %s runs; %s)\n\n' "$title" "$REPEAT" "$units"
    {
        line="workload\t${MODE_LABEL[$base]:-$base}"
        for m in "$@"; do line+="\t${MODE_LABEL[$m]:-etlfs-$m}\tratio"; done
        [[ -z $ref ]] || line+="\t${MODE_LABEL[$ref]:-$ref}\tetlfs/$ref"
        printf '%b\ttarget\t%s\n' "$line" "${MODE_LABEL[$1]:-$1}"
        for row in "${ROWS[@]}"; do
            [[ -n ${SAMPLES["$row|$base"]:-} ]] || continue
            bmed=$(median "${SAMPLES["$row|$base"]}")
            line="${ROW_LABEL[$row]}\t$(value "$row" "$bmed")"
            verdict=
            for m in "$@"; do
                med=$(median "${SAMPLES["$row|$m"]}")
                r=$(ratio "$row" "$bmed" "$med")
                line+="\t$(value "$row" "$med")\t${r}x"
                if [[ -z $verdict ]]; then
                    verdict=$(verdict "$r" "${ROW_TARGET[$row]}")
                    if [[ -n ${ROW_MAX[$row]:-} && $verdict == PASS ]]; then
                        verdict=$(verdict "$med" "<=${ROW_MAX[$row]}")
                    fi
                fi
            done
            if [[ -n $ref ]]; then
                if [[ -n ${SAMPLES["$row|$ref"]:-} ]]; then
                    bmed=$(median "${SAMPLES["$row|$ref"]}")
                    med=$(median "${SAMPLES["$row|$1"]}")
                    line+="\t$(value "$row" "$bmed")\t$(ratio "$row" "$bmed" "$med")x"
                else
                    line+="\t-\t-"
                fi
            fi
            target=$(sed -E 's/^([<>]=?)/\1 /' <<<"${ROW_TARGET[$row]}")x
            [[ -z ${ROW_MAX[$row]:-} ]] || target="<= ${ROW_MAX[$row]} s, $target"
            [[ ${ROW_TARGET[$row]} != - ]] || target=- verdict=-
            printf '%b\t%s\t%s\n' "$line" "$target" "$verdict"
        done
    } | format_table
    printf '\n'
}

# print_abs_table TITLE MODE: one line per defined row with MODE's median, minimum and maximum,
# judged against ROW_TARGET as an absolute limit (e.g. "<=5"; "-" for none).
print_abs_table() {
    local title=$1 m=$2 row samples med lo hi target verdict unit
    printf '\n%s (median of %s runs, and the range)\n\n' "$title" "$REPEAT"
    {
        printf 'workload\t%s\tmin\tmax\ttarget\t%s\n' "${MODE_LABEL[$m]:-$m}" "${MODE_LABEL[$m]:-$m}"
        for row in "${ROWS[@]}"; do
            samples=${SAMPLES["$row|$m"]:-}
            [[ -n $samples ]] || continue
            med=$(median "$samples")
            lo=$(tr ' ' '\n' <<<"$samples" | awk 'NF' | sort -g | head -n 1)
            hi=$(tr ' ' '\n' <<<"$samples" | awk 'NF' | sort -g | tail -n 1)
            if [[ ${ROW_KIND[$row]} == mib ]]; then unit=MiB; else unit=s; fi
            if [[ ${ROW_TARGET[$row]} == - ]]; then
                target=- verdict=-
            else
                target="$(sed -E 's/^([<>]=?)/\1 /' <<<"${ROW_TARGET[$row]}") $unit"
                verdict=$(verdict "$med" "${ROW_TARGET[$row]}")
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "${ROW_LABEL[$row]}" "$(value "$row" "$med")" \
                "$(value "$row" "$lo")" "$(value "$row" "$hi")" "$target" "$verdict"
        done
    } | format_table
    printf '\n'
}

