//! The README's complete aggregate and its usage snippet (the same code,
//! laid out by rustfmt): if the README's code stops compiling or behaving,
//! this fails.

#[path = "readme/domain.rs"]
#[allow(unused_imports, dead_code)]
mod domain;

use domain::*;

#[tokio::test]
async fn the_readme_snippets_run() -> Result<(), Box<dyn std::error::Error>> {
    let accounts = Repository::<Account, _>::new(evently::memory::MemoryStore::new());
    accounts
        .execute(AccountCommand::Open {
            id: "alice".into(),
            owner: "Alice".into(),
        })
        .await?;

    evently::testing::given::<Account>([AccountEvent::Opened {
        owner: "Alice".into(),
    }])
    .when(AccountCommand::Withdraw {
        id: "alice".into(),
        amount: 5,
    })
    .then_expect_error(AccountError::Insufficient(0));
    accounts
        .execute(AccountCommand::Deposit {
            id: "alice".into(),
            amount: 10,
        })
        .await?;
    assert_eq!(
        accounts.load("alice").await?.state,
        Account {
            open: true,
            balance: 10
        }
    );
    Ok(())
}
