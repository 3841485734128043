-- wrk script for scripts/bench's paced rows: each connection waits PACE_MS milliseconds
-- (default 2) after each response before it sends its next request, so the servers compared
-- see about the same request rate (at most connections x 1000 / PACE_MS per second; wrk's
-- timer has millisecond steps) instead of as many requests as each can answer. Latency is
-- still measured from sending a request to its response; the pause is not counted.
local pause = tonumber(os.getenv("PACE_MS") or "2")

function delay()
    return pause
end
