"""Ray Serve deployments (generator replicas, reward, router) and the app builder."""
