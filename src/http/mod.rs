//! What every HTTP front of keygate shares: the proxy and the admin API answer their refusals
//! with the same problem+json.

pub mod problem;
