"""Step-to-step block caching (Temporal Delta Cache).

Not built yet: `CacheConfig(mode="tdc")` raises `NotImplementedMethodError` at `accelerate()` time."""
