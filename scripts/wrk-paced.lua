-- wrk script for scripts/bench's paced rows: each connection waits about PACE_MS milliseconds
-- (default 2) after each response before it sends its next request, so the servers compared
-- see about the same request rate (at most connections x 1000 / PACE_MS per second; wrk's
-- timer has millisecond steps) instead of as many requests as each can answer. Latency is
-- still measured from sending a request to its response; the pause is not counted.
--
-- Each pause is drawn evenly from 0 to 2 x PACE_MS (its mean is PACE_MS): with one fixed
-- pause, connections that start together stay in step, and 4,000 of them would arrive as
-- bursts of 4,000 requests rather than a steady rate.
local pause = tonumber(os.getenv("PACE_MS") or "2")

function delay()
    return math.random(0, 2 * pause)
end
