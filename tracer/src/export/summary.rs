//! The periodic summary is the core's report of an interval ([`crate::core::interval`]); the
//! exports render it under this name.
pub(crate) use crate::core::interval::{Connects, Summary};
