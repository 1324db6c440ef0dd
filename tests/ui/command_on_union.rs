use evently::Command;

#[derive(Clone, Copy, Command)]
union AccountCommand {
    open: u64,
}

fn main() {}
