# Sourced by the scripts that start servers: wait_for URL WHAT waits up to 10 seconds
# for URL to answer, and otherwise stops the script, saying that WHAT did not start.
wait_for() {
    for _ in $(seq 1 50); do
        curl -fs "$1" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "$2 did not start ($1)" >&2
    exit 1
}
