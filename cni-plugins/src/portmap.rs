//! `portmap`: not implemented yet; every command that would change the host says so.

use serde_json::Value;

use crate::error::{CniError, Result};
use crate::skel::{Args, Plugin};
use crate::types::{self, CniResult};

pub struct Portmap;

fn unimplemented() -> CniError {
    CniError::plugin("unimplemented: portmap is not implemented yet")
}

impl Plugin for Portmap {
    fn validate(&self, conf: &Value) -> Result<()> {
        types::check_keys(
            conf,
            &[
                "snat",
                "masqAll",
                "markMasqBit",
                "externalSetMarkChain",
                "conditionsV4",
                "conditionsV6",
                "backend",
            ],
            "portmap config",
        )
    }

    fn add(&self, _args: &Args, _conf: &Value) -> Result<CniResult> {
        Err(unimplemented())
    }

    fn del(&self, _args: &Args, _conf: &Value) -> Result<()> {
        // Nothing was ever added, so there is nothing to remove.
        Ok(())
    }

    fn check(&self, _args: &Args, _conf: &Value) -> Result<()> {
        Err(unimplemented())
    }
}
