//! SCD type 2 writes (see [`write`]).

use deltalake::datafusion::prelude::{DataFrame, SessionContext};

use crate::error::Result;
use crate::transform::{Writer, Written};

pub(crate) async fn write(writer: &Writer<'_>, _context: &SessionContext, _frame: DataFrame, _run_id: &str) -> Result<Written> {
    Err(writer.transform_error("scd2: not built yet".to_owned()))
}
