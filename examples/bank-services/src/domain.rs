//! The domain: the account aggregate (the accounts service's) and the
//! read models kept from its events (the reporting service's).

use evently::prelude::*;
use serde::{Deserialize, Serialize};

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum AccountEvent {
    /// The account was opened for `owner`.
    Opened {
        /// Who owns it.
        owner: String,
    },
    /// Money came in.
    Deposited {
        /// How much, in cents.
        amount: u64,
    },
    /// Money went out.
    Withdrew {
        /// How much, in cents.
        amount: u64,
    },
    /// Money left for another account (a transfer's first step).
    TransferSent {
        /// The transfer.
        transfer: String,
        /// The target account.
        to: String,
        /// How much, in cents.
        amount: u64,
    },
    /// Money came in from another account.
    TransferReceived {
        /// The transfer.
        transfer: String,
        /// How much, in cents.
        amount: u64,
    },
    /// Money sent by a transfer that failed came back.
    TransferReturned {
        /// The transfer.
        transfer: String,
        /// How much, in cents.
        amount: u64,
    },
}

/// What can be asked of an account; travels as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, Command)]
pub enum AccountCommand {
    /// Open the account `id`.
    Open {
        /// The account id.
        id: String,
        /// Who owns it.
        owner: String,
    },
    /// Put money in.
    Deposit {
        /// The account id.
        id: String,
        /// How much, in cents.
        amount: u64,
    },
    /// Take money out.
    Withdraw {
        /// The account id.
        id: String,
        /// How much, in cents.
        amount: u64,
    },
    /// Send money to another account: the transfer process does the rest.
    Transfer {
        /// The source account.
        id: String,
        /// The target account.
        to: String,
        /// How much, in cents.
        amount: u64,
        /// The transfer's id.
        transfer: String,
    },
    /// Take in a transfer's money (sent by the transfer process).
    Receive {
        /// The target account.
        id: String,
        /// How much, in cents.
        amount: u64,
        /// The transfer.
        transfer: String,
    },
    /// Take back a failed transfer's money (sent by the transfer process).
    Return {
        /// The source account.
        id: String,
        /// How much, in cents.
        amount: u64,
        /// The transfer.
        transfer: String,
    },
}

/// Why an account refuses a command; reaches the caller as this value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum AccountError {
    /// Opening an open account.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Anything but opening, on an account never opened.
    #[error("the account is not open")]
    NotOpen,
    /// An amount of zero.
    #[error("the amount must be more than zero")]
    ZeroAmount,
    /// A withdrawal beyond the balance.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// The balance.
        balance: u64,
        /// The amount asked for.
        requested: u64,
    },
}

/// The account aggregate.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize, Aggregate)]
#[aggregate(name = "account", event = AccountEvent, command = AccountCommand, error = AccountError)]
pub struct Account {
    open: bool,
    balance: u64,
}

impl Account {
    fn decide(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { .. } if self.open => Err(AccountError::AlreadyOpen),
            Open { owner, .. } => Ok(vec![AccountEvent::Opened { owner }]),
            _ if !self.open => Err(AccountError::NotOpen),
            Deposit { amount: 0, .. } | Withdraw { amount: 0, .. } | Transfer { amount: 0, .. } => {
                Err(AccountError::ZeroAmount)
            }
            Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
            Withdraw { amount, .. } | Transfer { amount, .. } if amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: amount,
                })
            }
            Withdraw { amount, .. } => Ok(vec![AccountEvent::Withdrew { amount }]),
            Transfer {
                to,
                amount,
                transfer,
                ..
            } => Ok(vec![AccountEvent::TransferSent {
                transfer,
                to,
                amount,
            }]),
            Receive {
                amount, transfer, ..
            } => Ok(vec![AccountEvent::TransferReceived { transfer, amount }]),
            Return {
                amount, transfer, ..
            } => Ok(vec![AccountEvent::TransferReturned { transfer, amount }]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        if let AccountEvent::Opened { .. } = event {
            self.open = true;
        }
        self.balance = balance_after(self.balance, event);
    }
}

/// An account's balance after `event`.
fn balance_after(balance: u64, event: &AccountEvent) -> u64 {
    match event {
        AccountEvent::Opened { .. } => balance,
        AccountEvent::Deposited { amount }
        | AccountEvent::TransferReceived { amount, .. }
        | AccountEvent::TransferReturned { amount, .. } => balance + amount,
        AccountEvent::Withdrew { amount } | AccountEvent::TransferSent { amount, .. } => {
            balance - amount
        }
    }
}

/// Reporting: an account's balance (view `balances`, one document per
/// account). Its document version is the account's stream version: every
/// event of the account is applied to it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    /// Who owns it.
    pub owner: String,
    /// The balance, in cents.
    pub balance: u64,
}

impl View for Balance {
    type Event = AccountEvent;

    fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
        if let AccountEvent::Opened { owner } = &event.data {
            self.owner = owner.clone();
        }
        self.balance = balance_after(self.balance, &event.data);
    }
}

/// One line of a ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The account's version after it.
    pub version: u64,
    /// `deposit` or `withdrawal`.
    pub kind: String,
    /// The amount, in cents.
    pub amount: u64,
    /// The balance after it.
    pub balance: u64,
    /// When the accounts service recorded it.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Reporting: the movements of an account, newest last (view `ledgers`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The movements.
    pub entries: Vec<Entry>,
}

impl View for Ledger {
    type Event = AccountEvent;

    fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
        let before = self.entries.last().map_or(0, |e| e.balance);
        let (kind, amount) = match &event.data {
            AccountEvent::Deposited { amount } => ("deposit", *amount),
            AccountEvent::Withdrew { amount } => ("withdrawal", *amount),
            AccountEvent::TransferSent { amount, .. } => ("transfer out", *amount),
            AccountEvent::TransferReceived { amount, .. } => ("transfer in", *amount),
            AccountEvent::TransferReturned { amount, .. } => ("transfer returned", *amount),
            AccountEvent::Opened { .. } => return,
        };
        let balance = balance_after(before, &event.data);
        self.entries.push(Entry {
            version: event.stream_version,
            kind: kind.to_owned(),
            amount,
            balance,
            at: event.recorded_at,
        });
    }
}

/// Reporting: money in and out per day, over every account (view
/// `daily_totals`, keyed by the date, `2026-12-01`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyTotals {
    /// Deposits, in cents.
    pub deposited: u64,
    /// Withdrawals, in cents.
    pub withdrawn: u64,
    /// Movements counted.
    pub movements: u64,
}

impl View for DailyTotals {
    type Event = AccountEvent;

    fn key(event: &RecordedEvent<AccountEvent>) -> Option<String> {
        match event.data {
            AccountEvent::Deposited { .. } | AccountEvent::Withdrew { .. } => {
                Some(event.recorded_at.date_naive().to_string())
            }
            _ => None,
        }
    }

    fn apply(&mut self, event: &RecordedEvent<AccountEvent>) {
        match event.data {
            AccountEvent::Deposited { amount } => self.deposited += amount,
            AccountEvent::Withdrew { amount } => self.withdrawn += amount,
            // Money moving between accounts is neither in nor out of the bank.
            _ => return,
        }
        self.movements += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evently::testing::given;

    #[test]
    fn an_overdraft_is_refused_with_the_balance() {
        given::<Account>([
            AccountEvent::Opened {
                owner: "Ann".into(),
            },
            AccountEvent::Deposited { amount: 30 },
        ])
        .when(AccountCommand::Withdraw {
            id: "a".into(),
            amount: 50,
        })
        .then_expect_error(AccountError::InsufficientFunds {
            balance: 30,
            requested: 50,
        });
    }
}
