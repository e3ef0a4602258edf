"""The JSON API of the review app: worklist, studies, review actions, second opinions, audit, images, photo upload."""
