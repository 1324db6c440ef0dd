use evently::projection::{HandlerError, Projection};
use evently::RecordedEvent;

#[derive(Debug, serde::Serialize, serde::Deserialize, evently::Event)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

#[derive(Projection)]
#[projection(event = AccountEvent, sink = u64, apply(Opened = open))]
struct Balances;

impl Balances {
    async fn open(&self, _: &mut u64, _: &RecordedEvent<AccountEvent>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
