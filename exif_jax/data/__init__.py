"""Photos -> ArrayRecord shards -> grain batches on a mesh."""
