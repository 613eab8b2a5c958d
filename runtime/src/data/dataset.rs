//! The in-memory data set: u8 pixels in NHWC order plus integer labels.
//!
//! Pixels stay u8 all the way to the network, whose input scale is 1/255
//! (see [`super::to_unit_f32`]); keeping them u8 makes a 60 000-image set
//! 47 MB instead of 188 MB and makes augmentation exact.

use super::error::DataError;
use super::rng::Rng;

/// A labelled image set held in memory.
///
/// Invariants (checked by [`Dataset::new`], relied on by every method):
/// `images.len() == n * h * w * c`, `labels.len() == n`,
/// every label `< classes`, and `class_names.len() == classes`.
/// The fields are public for cheap read access; code that mutates them
/// must keep these invariants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// A short name for messages, e.g. `fashion-mnist/train`.
    pub name: String,
    /// All pixels, image after image, each image row-major HWC.
    pub images: Vec<u8>,
    /// One label per image, in `0..classes`.
    pub labels: Vec<u16>,
    /// Number of images.
    pub n: usize,
    /// Image height in pixels.
    pub h: usize,
    /// Image width in pixels.
    pub w: usize,
    /// Channels per pixel (1 for (Fashion-)MNIST, 3 for CIFAR).
    pub c: usize,
    /// Number of classes; labels are below it.
    pub classes: usize,
    /// A human-readable name per class (length `classes`).
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Builds a data set and checks its invariants. Class names default to
    /// `"0"`, `"1"`, ...; set them with [`Dataset::with_class_names`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: impl Into<String>,
        images: Vec<u8>,
        labels: Vec<u16>,
        n: usize,
        h: usize,
        w: usize,
        c: usize,
        classes: usize,
    ) -> Result<Self, DataError> {
        let name = name.into();
        let per = h
            .checked_mul(w)
            .and_then(|p| p.checked_mul(c))
            .ok_or_else(|| {
                DataError::Invalid(format!("{name}: image size {h}x{w}x{c} overflows"))
            })?;
        let total = per.checked_mul(n).ok_or_else(|| {
            DataError::Invalid(format!("{name}: {n} images of {per} bytes overflow"))
        })?;
        if images.len() != total {
            return Err(DataError::Invalid(format!(
                "{name}: {} pixel bytes for {n} images of {h}x{w}x{c} (expected {total})",
                images.len()
            )));
        }
        if labels.len() != n {
            return Err(DataError::Invalid(format!(
                "{name}: {} labels for {n} images",
                labels.len()
            )));
        }
        if classes == 0 {
            return Err(DataError::Invalid(format!("{name}: zero classes")));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(DataError::Invalid(format!(
                "{name}: label {l} of sample {i} is not below the {classes} classes"
            )));
        }
        let class_names = (0..classes).map(|k| k.to_string()).collect();
        Ok(Dataset {
            name,
            images,
            labels,
            n,
            h,
            w,
            c,
            classes,
            class_names,
        })
    }

    /// Replaces the class names; an error if the count is not `classes`.
    pub fn with_class_names<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> Result<Self, DataError> {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.len() != self.classes {
            return Err(DataError::Invalid(format!(
                "{}: {} class names for {} classes",
                self.name,
                names.len(),
                self.classes
            )));
        }
        self.class_names = names;
        Ok(self)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes per image (`h * w * c`).
    pub fn image_len(&self) -> usize {
        self.h * self.w * self.c
    }

    /// Shape of one image as `[h, w, c]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.h, self.w, self.c]
    }

    /// The pixels of image `i` (HWC). Panics if `i >= len()`, like slice
    /// indexing: an index out of range is a bug in the caller, not bad data.
    pub fn image(&self, i: usize) -> &[u8] {
        assert!(
            i < self.n,
            "image index {i} out of range for {} images",
            self.n
        );
        let per = self.image_len();
        &self.images[i * per..(i + 1) * per]
    }

    /// The label of image `i`. Panics if `i >= len()`.
    pub fn label(&self, i: usize) -> u16 {
        self.labels[i]
    }

    /// How many images each class has (length `classes`).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// A new data set holding the given images, in the given order
    /// (repeats allowed). Panics on an index out of range, like slicing.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let per = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * per);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            name: self.name.clone(),
            images,
            labels,
            n: indices.len(),
            h: self.h,
            w: self.w,
            c: self.c,
            classes: self.classes,
            class_names: self.class_names.clone(),
        }
    }

    /// The indices of a class-balanced sample: `per_class` images of every
    /// class, chosen at random but determined by `seed` alone, returned in
    /// ascending order (so the subset keeps the source's interleaving of
    /// classes). An error if some class has fewer than `per_class` images.
    pub fn stratified_indices(&self, per_class: usize, seed: u64) -> Result<Vec<usize>, DataError> {
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); self.classes];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        if let Some((k, members)) = by_class
            .iter()
            .enumerate()
            .find(|(_, m)| m.len() < per_class)
        {
            return Err(DataError::Invalid(format!(
                "{}: class {k} ({}) has {} images, fewer than the {per_class} asked for",
                self.name,
                self.class_names[k],
                members.len()
            )));
        }
        let mut chosen = Vec::with_capacity(per_class * self.classes);
        for (k, members) in by_class.iter_mut().enumerate() {
            // One stream per class: the choice for class k does not depend
            // on how many images the other classes have.
            let mut rng = Rng::from_keys(&[seed, k as u64, 0x5752_4154]);
            rng.shuffle(members);
            chosen.extend_from_slice(&members[..per_class]);
        }
        chosen.sort_unstable();
        Ok(chosen)
    }

    /// A class-balanced subset with `per_class` images of every class (so
    /// `per_class * classes` in all); see [`Dataset::stratified_indices`].
    pub fn stratified_subset(&self, per_class: usize, seed: u64) -> Result<Dataset, DataError> {
        Ok(self.subset(&self.stratified_indices(per_class, seed)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 classes with 5, 4 and 3 images; pixel value = image index.
    fn toy() -> Dataset {
        let labels: Vec<u16> = vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0];
        let n = labels.len();
        let images: Vec<u8> = (0..n).flat_map(|i| [i as u8; 2 * 2]).collect();
        Dataset::new("toy", images, labels, n, 2, 2, 1, 3).unwrap()
    }

    #[test]
    fn new_checks_invariants() {
        assert!(Dataset::new("x", vec![0; 7], vec![0, 0], 2, 2, 2, 1, 1).is_err());
        assert!(Dataset::new("x", vec![0; 8], vec![0], 2, 2, 2, 1, 1).is_err());
        assert!(Dataset::new("x", vec![0; 8], vec![0, 3], 2, 2, 2, 1, 3).is_err());
        assert!(Dataset::new("x", vec![0; 8], vec![0, 2], 2, 2, 2, 1, 3).is_ok());
        assert!(Dataset::new("x", vec![], vec![], 0, 2, 2, 1, 0).is_err());
        assert!(Dataset::new("x", vec![], vec![], usize::MAX, 2, 2, 1, 1).is_err());
    }

    #[test]
    fn image_subset_and_counts() {
        let d = toy();
        assert_eq!(d.len(), 12);
        assert_eq!(d.image(3), &[3, 3, 3, 3]);
        assert_eq!(d.class_counts(), vec![5, 4, 3]);
        let s = d.subset(&[5, 0, 5]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.labels, vec![2, 0, 2]);
        assert_eq!(s.image(0), &[5; 4]);
        assert_eq!(s.image(1), &[0; 4]);
    }

    #[test]
    fn stratified_subset_is_balanced_and_deterministic() {
        let d = toy();
        let a = d.stratified_subset(3, 42).unwrap();
        assert_eq!(a.class_counts(), vec![3, 3, 3]);
        assert_eq!(a, d.stratified_subset(3, 42).unwrap());
        let ia = d.stratified_indices(3, 42).unwrap();
        assert!(ia.windows(2).all(|p| p[0] < p[1]), "ascending, no repeats");
        // Another seed picks other images of the larger classes at least
        // once among a few tries.
        assert!((43..60).any(|s| d.stratified_indices(3, s).unwrap() != ia));
        // Class 2 has only 3 images.
        let err = d.stratified_subset(4, 42).unwrap_err();
        assert!(err.to_string().contains("class 2"), "{err}");
    }
}
