//! The ablation's control: the same architecture with a seeded random initialisation, to
//! measure what the ImageNet weights contribute.

use resnet50::{BatchNorm, Conv, ResNet50};

use seeded::Rng;

/// Gain on the last BatchNorm of each residual branch: keeps activations from growing
/// block after block when there are no learned statistics to normalise them.
const BRANCH_GAIN: f32 = 0.2;

fn conv(c: &mut Conv, rng: &mut Rng) {
    let [_, i, h, w] = c.shape;
    let std = (2.0 / (h * w * i) as f32).sqrt();
    c.kernel.iter_mut().for_each(|k| *k = std * rng.normal());
    c.bias.iter_mut().for_each(|b| *b = 0.0);
}

fn bn(b: &mut BatchNorm, gain: f32) {
    b.gamma.iter_mut().for_each(|g| *g = gain);
    b.beta.iter_mut().for_each(|x| *x = 0.0);
    b.mean.iter_mut().for_each(|x| *x = 0.0);
    b.var.iter_mut().for_each(|x| *x = 1.0);
}

/// Replaces every convolution by He-normal weights (seeded), biases by zero, and BatchNorm
/// by the identity (the last of each residual branch scaled by 0.2).
pub fn randomise(net: &mut ResNet50, seed: u64) {
    let mut rng = Rng::new(seed ^ 0xA5A5_0000_0000_0001);
    conv(&mut net.conv1, &mut rng);
    bn(&mut net.bn1, 1.0);
    for block in net.stages.iter_mut().flatten() {
        conv(&mut block.conv_a, &mut rng);
        conv(&mut block.conv_b, &mut rng);
        conv(&mut block.conv_c, &mut rng);
        bn(&mut block.bn_a, 1.0);
        bn(&mut block.bn_b, 1.0);
        bn(&mut block.bn_c, BRANCH_GAIN);
        if let Some((c, b)) = block.shortcut.as_mut() {
            conv(c, &mut rng);
            bn(b, 1.0);
        }
    }
}
