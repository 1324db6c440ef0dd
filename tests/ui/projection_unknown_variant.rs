use es::projection::{HandlerError, Projection};
use es::RecordedEvent;

#[derive(Debug, serde::Serialize, serde::Deserialize, es::Event)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, handle(Opened = opened, Closed = opened))]
struct Balances;

impl Balances {
    async fn opened(&self, _: &mut u64, _: &RecordedEvent<AccountEvent>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
