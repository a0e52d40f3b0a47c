"""Mail log watcher: follows the Postfix log and turns delivery lines into events."""
