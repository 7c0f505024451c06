"""The index side of an OUTPUT: query vectors made exactly as its documents were, and exact
search over it (the reference a vector store is checked against)."""
