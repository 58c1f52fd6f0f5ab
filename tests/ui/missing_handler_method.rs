// A handler implementation that lacks the trait's method does not compile.
use orkestra_tests::orders::handlers;

struct Mailer;

impl handlers::SendOrderConfirmation for Mailer {}

fn main() {}
