"""Review logic above the database and Label Studio: exemplars from reviews, suggestions."""
