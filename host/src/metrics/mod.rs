//! What the server counts about itself: [`counters`] (recorded on the request path with
//! relaxed atomics), [`history`] (their recent past, for the status page's charts), [`latency`] (the histogram's buckets and quantile) and [`snapshot`] (one consistent read of them, for the admin pages).

pub mod counters;
pub mod history;
pub mod latency;
pub mod snapshot;
