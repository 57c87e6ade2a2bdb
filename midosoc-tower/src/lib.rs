//! Tower middleware that holds risky requests until a human approves them.
