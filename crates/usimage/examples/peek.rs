//! Debug aid: prints a pixel window of a file's first frame. `peek FILE X Y [W H]`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let f = usimage::UsFile::open(std::path::Path::new(&a[0]))?.frame(0)?;
    let p = |i: usize, d: u32| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (x, y, w, h) = (p(1, 0), p(2, 0), p(3, 16), p(4, 8));
    for yy in y..(y + h).min(f.height()) {
        let row: Vec<String> = (x..(x + w).min(f.width()))
            .map(|xx| format!("{:3}", f.grey()[(yy * f.width() + xx) as usize]))
            .collect();
        println!("{}", row.join(" "));
    }
    Ok(())
}
