//! cqrs-demo's bank account (the reference example of cqrs-es), on `evently`:
//! the same commands, events, services, rules and `BankAccountView`. It
//! runs in memory; the same types run on PostgreSQL (see the bank_account
//! example). Run it with `cargo run --example cqrs_demo`; its
//! given/when/then tests run with `cargo test --example cqrs_demo`.
//!
//! The domain and the view are the code above `HappyPath`: 130 lines that
//! are neither blank nor comments (cqrs-es needs 248 for the same).

use std::sync::Arc;

use evently::prelude::*;
use evently::view::View;
use serde::{Deserialize, Serialize};

// No id field: a command is sent to an account by id (`execute_on`).
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
pub enum BankAccountCommand {
    OpenAccount { account_id: String },
    DepositMoney { amount: f64 },
    WithdrawMoney { amount: f64, atm_id: String },
    WriteCheck { check_number: String, amount: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum BankAccountEvent {
    AccountOpened {
        account_id: String,
    },
    CustomerDepositedMoney {
        amount: f64,
        balance: f64,
    },
    CustomerWithdrewCash {
        amount: f64,
        balance: f64,
    },
    CustomerWroteCheck {
        check_number: String,
        amount: f64,
        balance: f64,
    },
}

/// A refusal, in words (as cqrs-demo's `BankAccountError`).
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BankAccountError(&'static str);

/// What the account consults while deciding: an ATM network, a check clearing house.
pub trait BankAccountApi: Send + Sync {
    fn atm_withdrawal(&self, atm_id: &str, amount: f64) -> BoxResult;
    fn validate_check(&self, account_id: &str, check_number: &str) -> BoxResult;
}

pub type BoxResult = futures::future::BoxFuture<'static, Result<(), ()>>;
pub type BankAccountServices = Arc<dyn BankAccountApi>;

#[derive(Debug, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "account", event = BankAccountEvent, command = BankAccountCommand, error = BankAccountError, services = BankAccountServices)]
pub struct BankAccount {
    account_id: String,
    balance: f64,
}

impl BankAccount {
    async fn decide(
        &self,
        command: BankAccountCommand,
        services: &BankAccountServices,
    ) -> Result<Vec<BankAccountEvent>, BankAccountError> {
        use {BankAccountCommand::*, BankAccountEvent::*};
        let debit = |amount: f64| match self.balance - amount {
            balance if balance < 0.0 => Err(BankAccountError("funds not available")),
            balance => Ok(balance),
        };
        Ok(vec![match command {
            OpenAccount { account_id } => AccountOpened { account_id },
            DepositMoney { amount } => {
                let balance = self.balance + amount;
                CustomerDepositedMoney { amount, balance }
            }
            WithdrawMoney { amount, atm_id } => {
                let balance = debit(amount)?;
                let atm = services.atm_withdrawal(&atm_id, amount).await;
                atm.map_err(|_| BankAccountError("atm rule violation"))?;
                CustomerWithdrewCash { amount, balance }
            }
            WriteCheck {
                check_number,
                amount,
            } => {
                let balance = debit(amount)?;
                let check = services
                    .validate_check(&self.account_id, &check_number)
                    .await;
                check.map_err(|_| BankAccountError("check invalid"))?;
                CustomerWroteCheck {
                    check_number,
                    amount,
                    balance,
                }
            }
        }])
    }

    fn apply(&mut self, event: &BankAccountEvent) {
        match event {
            BankAccountEvent::AccountOpened { account_id } => self.account_id = account_id.clone(),
            BankAccountEvent::CustomerDepositedMoney { balance, .. }
            | BankAccountEvent::CustomerWithdrewCash { balance, .. }
            | BankAccountEvent::CustomerWroteCheck { balance, .. } => self.balance = *balance,
        }
    }
}

/// The read model: one document per account, on any store.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankAccountView {
    account_id: Option<String>,
    balance: f64,
    written_checks: Vec<String>,
    ledger: Vec<LedgerEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    description: String,
    amount: f64,
}

impl View for BankAccountView {
    type Event = BankAccountEvent;

    fn apply(&mut self, event: &RecordedEvent<BankAccountEvent>) {
        use BankAccountEvent::*;
        let (description, amount, balance) = match &event.data {
            AccountOpened { account_id } => return self.account_id = Some(account_id.clone()),
            CustomerDepositedMoney { amount, balance } => ("deposit".into(), *amount, balance),
            CustomerWithdrewCash { amount, balance } => ("atm withdrawal".into(), -amount, balance),
            CustomerWroteCheck {
                check_number,
                amount,
                balance,
            } => {
                self.written_checks.push(check_number.clone());
                (check_number.clone(), -amount, balance)
            }
        };
        self.balance = *balance;
        self.ledger.push(LedgerEntry {
            description,
            amount,
        });
    }
}

/// Services that always say yes, except for check number "bounced".
struct HappyPath;

impl BankAccountApi for HappyPath {
    fn atm_withdrawal(&self, _: &str, _: f64) -> BoxResult {
        Box::pin(async { Ok(()) })
    }
    fn validate_check(&self, _: &str, check_number: &str) -> BoxResult {
        let ok = check_number != "bounced";
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(())
            }
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use evently::{projection::ProjectionOptions, view::ViewStore};
    use std::time::Duration;
    let store = evently::memory::MemoryStore::new();
    let services: BankAccountServices = Arc::new(HappyPath);
    let accounts = Repository::<BankAccount, _>::with_services(store.clone(), services);
    let views = store
        .run_view::<BankAccountView>("bank_accounts", ProjectionOptions::default())
        .await?;

    let id = "ACCT-4375";
    accounts
        .execute_on(
            id,
            BankAccountCommand::OpenAccount {
                account_id: id.into(),
            },
        )
        .await?;
    accounts
        .execute_on(id, BankAccountCommand::DepositMoney { amount: 1000.0 })
        .await?;
    accounts
        .execute_on(
            id,
            BankAccountCommand::WithdrawMoney {
                amount: 200.0,
                atm_id: "ATM-N468290".into(),
            },
        )
        .await?;
    let last = accounts
        .execute_on(
            id,
            BankAccountCommand::WriteCheck {
                check_number: "1170".into(),
                amount: 300.0,
            },
        )
        .await?;
    let refused = accounts
        .execute_on(
            id,
            BankAccountCommand::WriteCheck {
                check_number: "bounced".into(),
                amount: 10.0,
            },
        )
        .await;
    println!("a bounced check: {}", refused.unwrap_err());

    views
        .wait_for(last.events[0].global_position, Duration::from_secs(5))
        .await?;
    let view = views.get(id).await?.expect("the account's view");
    println!("{}", serde_json::to_string_pretty(&view)?);
    assert_eq!(
        (view.balance, view.written_checks.as_slice()),
        (500.0, ["1170".to_owned()].as_slice())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use evently::testing::Scenario;
    use BankAccountEvent::*;

    fn scenario() -> Scenario<BankAccount> {
        Scenario::with_services(Arc::new(HappyPath) as BankAccountServices)
    }

    #[tokio::test]
    async fn deposit_money_with_balance() {
        scenario()
            .given([CustomerDepositedMoney {
                amount: 200.0,
                balance: 200.0,
            }])
            .when_async(BankAccountCommand::DepositMoney { amount: 200.0 })
            .await
            .then_expect_events([CustomerDepositedMoney {
                amount: 200.0,
                balance: 400.0,
            }]);
    }

    #[tokio::test]
    async fn withdraw_money_funds_not_available() {
        scenario()
            .when_async(BankAccountCommand::WithdrawMoney {
                amount: 200.0,
                atm_id: "ATM".into(),
            })
            .await
            .then_expect_error(BankAccountError("funds not available"));
    }

    #[tokio::test]
    async fn a_check_the_clearing_house_refuses_is_invalid() {
        scenario()
            .given([CustomerDepositedMoney {
                amount: 200.0,
                balance: 200.0,
            }])
            .when_async(BankAccountCommand::WriteCheck {
                check_number: "bounced".into(),
                amount: 10.0,
            })
            .await
            .then_expect_error(BankAccountError("check invalid"));
    }

    #[tokio::test]
    async fn wrote_check() {
        scenario()
            .given([CustomerDepositedMoney {
                amount: 200.0,
                balance: 200.0,
            }])
            .when_async(BankAccountCommand::WriteCheck {
                check_number: "1170".into(),
                amount: 100.0,
            })
            .await
            .then_expect_events([CustomerWroteCheck {
                check_number: "1170".into(),
                amount: 100.0,
                balance: 100.0,
            }]);
    }
}
