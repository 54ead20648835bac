"""Data: the download of the source images, MTCNN alignment, and the face cache training reads."""
