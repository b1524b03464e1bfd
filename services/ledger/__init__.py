"""The credit ledger: accounts, promotions, holds and append-only history."""
